"""A loopback stand-in for Ollama that speaks its documented HTTP API byte for byte.

- ``POST /api/chat``: ``application/x-ndjson`` over chunked transfer encoding, one compact
  JSON object per line; the last one has ``"done":true`` and the server's counters
  (durations in nanoseconds). A model not in ``models`` gets Ollama's 404 body.
- ``GET /api/tags``: the pulled models. ``GET /api/version``: the version.
- ``mode`` picks a failure: ``"500"``, ``"cut"`` (the connection drops after two chunks),
  ``"no_done"`` (the stream ends cleanly but never says done), ``"error_line"``.

The server runs its own event loop in a background thread, listens on 127.0.0.1 only,
and is stopped by ``stop()`` (or the ``with`` block), which closes every connection.
"""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import datetime, timezone
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

MAX_REQUESTS_PER_CONNECTION = 100
DIGEST = "61819fb370a3c1a9be6694869331e5f85f867a079e9271d66cb223acb81d04ba"
REASONS = {200: "OK", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway"}
HANG_S = 30.0  # a hanging chat is released after this, or when the server stops


def compact(obj: Any) -> bytes:
    """Go's encoding/json: no spaces, UTF-8 as is."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def created_at() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}123Z"


class OllamaStub:
    def __init__(self, models: tuple[str, ...] = ("phi3.5:latest",),
                 reply: tuple[str, ...] = ("Hello", " from", " Ollama", "!"), mode: str = "ok",
                 modes: dict[str, str] | None = None):
        """``mode`` for every model, or per model in ``modes``: ok, 500, cut, error_line, malformed,
        401 (echoes the key), 502 (an HTML page), hang."""
        self.models = list(models)
        self.modes = dict(modes or {})
        self.reply = list(reply)
        self.mode = mode
        self.final: dict[str, Any] = {
            "total_duration": 1_250_000_000,
            "load_duration": 1_000_000_000,
            "prompt_eval_count": 26,
            "prompt_eval_duration": 130_000_000,
            "eval_count": len(self.reply),
            "eval_duration": 80_000_000,
        }
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, parsed JSON body or None)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def chats(self) -> list[dict[str, Any]]:
        return [body for method, path, body in self.requests if path == "/api/chat"]

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> OllamaStub:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ollama-stub", daemon=True)
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop)
        self._server = future.result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._handlers):  # a hanging chat ends with the server
            task.cancel()
        if self._server is not None:
            await asyncio.wait_for(self._server.wait_closed(), 5)

    def __enter__(self) -> OllamaStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- HTTP ------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        try:
            for _ in range(MAX_REQUESTS_PER_CONNECTION):
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (line.partition(":") for line in header_lines if line)}
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                body = json.loads(raw) if raw else None
                self.requests.append((method, path, body))
                if not await self._route(method, path, body, writer, headers):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client closed its connection
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _route(self, method: str, path: str, body: Any, writer: asyncio.StreamWriter,
                     headers: dict[str, str] | None = None) -> bool:
        if method == "GET" and path == "/api/tags":
            await self._json(writer, 200, {"models": [self._tag(name) for name in self.models]})
        elif method == "GET" and path == "/api/version":
            await self._json(writer, 200, {"version": "0.6.3"})
        elif method == "POST" and path == "/api/chat":
            return await self._chat(writer, body, headers)
        else:
            await self._send(writer, 404, b"404 page not found", "text/plain")
        return True

    async def _chat(self, writer: asyncio.StreamWriter, body: dict[str, Any],
                    headers: dict[str, str] | None = None) -> bool:
        model = body["model"]
        mode = self.modes.get(model, self.mode)
        key = (headers or {}).get("authorization", "").removeprefix("Bearer ")
        if mode in ("401", "403", "429"):  # a proxy in front of Ollama that echoes what it was sent
            words = {"401": "unauthorized", "403": "forbidden", "429": "too many requests"}[mode]
            await self._json(writer, int(mode), {"error": f"{words}: key {key!r} ({quote(key, safe='')})"})
            return True
        if mode == "502":
            page = f"<html><body><h1>502 Bad Gateway</h1><p>/api/chat?key={quote(key, safe='')}</p></body></html>"
            await self._send(writer, 502, page.encode(), "text/html")
            return True
        if mode == "hang":  # never answer; released when the server stops (bounded by the client)
            await asyncio.sleep(HANG_S)
            return False
        if (model if ":" in model else f"{model}:latest") not in self.models:
            await self._json(writer, 404, {"error": f'model "{model}" not found, try pulling it first'})
            return True
        if mode == "500":
            await self._json(writer, 500, {"error": "llama runner process has terminated: signal: killed"})
            return True
        writer.write(self._status(200) + b"Content-Type: application/x-ndjson\r\n"
                     + self._date() + b"Transfer-Encoding: chunked\r\n\r\n")
        for i, text in enumerate(self.reply):
            if mode == "cut" and i == 2:
                writer.transport.abort()  # mid-stream: no terminating chunk
                return False
            if mode == "malformed" and i == 2:
                await self._chunk(writer, b'{"model": "' + model.encode() + b'", "message": {"content": "x"')
                break
            if mode == "error_line" and i == 2:
                await self._chunk(writer, compact({"error": "an error was encountered while running the model"}))
                break
            await self._chunk(writer, compact({"model": model, "created_at": created_at(),
                                               "message": {"role": "assistant", "content": text},
                                               "done": False}))
        if mode == "ok":
            await self._chunk(writer, compact({
                "model": model, "created_at": created_at(),
                "message": {"role": "assistant", "content": ""},
                "done_reason": "stop", "done": True, **self.final,
            }))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    def _tag(self, name: str) -> dict[str, Any]:
        return {
            "name": name, "model": name, "modified_at": "2024-08-21T14:30:00.410893585+02:00",
            "size": 2176178913, "digest": DIGEST,
            "details": {"parent_model": "", "format": "gguf", "family": "phi3", "families": ["phi3"],
                        "parameter_size": "3.8B", "quantization_level": "Q4_0"},
        }

    @staticmethod
    def _status(code: int) -> bytes:
        return f"HTTP/1.1 {code} {REASONS[code]}\r\n".encode()

    @staticmethod
    def _date() -> bytes:
        return f"Date: {formatdate(usegmt=True)}\r\n".encode()

    @staticmethod
    async def _chunk(writer: asyncio.StreamWriter, line: bytes) -> None:
        data = line + b"\n"
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await writer.drain()

    async def _json(self, writer: asyncio.StreamWriter, code: int, obj: Any) -> None:
        await self._send(writer, code, compact(obj), "application/json; charset=utf-8")

    async def _send(self, writer: asyncio.StreamWriter, code: int, payload: bytes, content_type: str) -> None:
        writer.write(self._status(code) + f"Content-Type: {content_type}\r\n".encode() + self._date()
                     + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        await writer.drain()
