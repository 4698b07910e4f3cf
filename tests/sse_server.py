"""A scripted OpenAI-compatible chat-completions server on loopback, for tests and benchmarks.

It speaks the wire format byte for byte over raw asyncio streams (no web framework in the
way): ``HTTP/1.1 200`` with ``content-type: text/event-stream``, chunked (or close-delimited)
bodies, ``data: {json}\\n\\n`` events, a role chunk, content chunks, a finish chunk, an
optional usage-only chunk (``"choices":[]``) and ``data: [DONE]``. It also answers
``GET /v1/models``. The request's ``model`` picks a :class:`Script`, so one server hosts many
behaviours, faults included. Unknown models get a real-looking 404.

Run it in a thread (``with ScriptedServer(scripts) as server``) or, where timing must not
share the client's GIL, in its own process (``with ServerProcess(scripts) as server``). Either
way ``server.received`` lists what arrived (for a process, once it has stopped), with the
connection it came on, so tests can tell a warm connection from a fresh one.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

Fault = Literal["drop", "no_finish", "malformed", "error_event", "hang"]
HANG_LIMIT_S = 30.0  # a hanging request is released after this, or when the server stops
CREATED = 1_732_000_000

ERROR_BODIES: dict[int, dict[str, Any]] = {
    401: {"message": "Incorrect API key provided: {key}. You can find your API key at "
                     "https://platform.openai.com/account/api-keys.",
          "type": "invalid_request_error", "param": None, "code": "invalid_api_key"},
    403: {"code": "no_access", "message": "No access to model: {model}", "details": "No access to model: {model}"},
    404: {"code": "unknown_model", "message": "Unknown model: {model}", "details": "Unknown model: {model}"},
    429: {"code": "RateLimitReached", "message": "Rate limit of 15 per 60s exceeded for UserByModelByMinute. "
                                                 "Please wait 7 seconds before retrying.", "details": "{key}"},
    500: {"message": "The server had an error while processing your request. Sorry about that!",
          "type": "server_error", "param": None, "code": None},
    503: {"message": "The engine is currently overloaded, please try again later.",
          "type": "server_error", "param": None, "code": None},
}
HTML_502 = ("<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center>"
            "<p>upstream: /v1/chat/completions?api-key={key_url}</p><hr><center>nginx</center></body></html>")
REASONS = {200: "OK", 502: "Bad Gateway", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True)
class Script:
    """How the server answers one model name."""

    tokens: int = 5
    ttft_s: float = 0.0  # from the request's arrival to the first content chunk
    interval_s: float = 0.0  # between content chunks
    finish_reason: str = "stop"  # "length" as well when max_tokens cuts the answer
    empty_first_chunk: bool = False  # Azure / GitHub Models send one with "choices":[] first
    status: int = 200  # anything else: that HTTP error with a real-looking JSON body
    retry_after: str | None = None  # header sent with an error status
    fault: Fault | None = None
    fault_after: int = 3  # content chunks sent before the fault
    chunked: bool = True  # False: close-delimited body
    prompt_tokens: int = 11
    usage_tokens: int | None = None  # completion_tokens to report, when chunks are not one token each
    cached_tokens: int | None = None  # prompt tokens from the prompt cache: OpenAI's usage details, as it sends them
    ttft_jitter_s: float = 0.0  # each request's TTFT gets a uniform extra in [0, this), seeded by its arrival
    echo_key: bool = False  # an error's message quotes the key it was sent: raw, repr-escaped, URL-encoded

    def token(self, i: int) -> str:
        return f"t{i} "


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None
    at: float  # time.perf_counter() on arrival
    peer: int = 0  # the client's port: one per connection
    nth: int = 0  # 0 for a connection's first request, 1 for the next one (keep-alive), ...
    first_token_at: float | None = None  # when the first content chunk was written
    events: list[float] = field(default_factory=list)  # when each content chunk was written


def text_of(tokens: int, script: Script | None = None) -> str:
    script = script or Script()
    return "".join(script.token(i) for i in range(tokens))


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


class _Conn:
    """One HTTP/1.1 connection: writes events as chunks (or raw when close-delimited)."""

    def __init__(self, writer: asyncio.StreamWriter, chunked: bool):
        self.writer, self.chunked = writer, chunked

    async def head(self, status: int, headers: dict[str, str]) -> None:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}"] + [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()

    async def send(self, payload: bytes) -> None:
        if self.chunked:
            payload = b"%x\r\n%s\r\n" % (len(payload), payload)
        self.writer.write(payload)
        await self.writer.drain()

    async def event(self, data: Any) -> None:
        await self.send(b"data: " + (data if isinstance(data, bytes) else _json(data)) + b"\n\n")

    async def end(self) -> None:
        if self.chunked:
            self.writer.write(b"0\r\n\r\n")
            await self.writer.drain()


class ScriptedServer:
    """Serves ``scripts`` on 127.0.0.1 from a background thread with its own event loop."""

    def __init__(self, scripts: dict[str, Script], hang_limit_s: float = HANG_LIMIT_S):
        self.scripts = dict(scripts)
        self.hang_limit_s = hang_limit_s
        self.received: list[Received] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # --- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> ScriptedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, ready_timeout_s: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="scripted-sse-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(ready_timeout_s) or self._error is not None:
            self.stop()
            raise RuntimeError(f"scripted server did not start: {self._error!r}")

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and not loop.is_closed() and self._stopping is not None:
            try:
                loop.call_soon_threadsafe(self._stopping.set)
            except RuntimeError:  # the loop closed in between
                pass
        if thread is not None:
            thread.join(timeout=10.0)
            if thread.is_alive():
                raise RuntimeError("scripted server thread did not stop")
        self._thread = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()

    # --- what arrived ---------------------------------------------------------------------
    def chat_requests(self, model: str | None = None) -> list[Received]:
        return [r for r in list(self.received) if r.path.endswith("/chat/completions")
                and (model is None or (isinstance(r.body, dict) and r.body.get("model") == model))]

    # --- serving --------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            peer = writer.get_extra_info("peername")[1]
            for nth in range(10_000):  # keep-alive: one connection, many requests (bounded)
                request = await self._read_request(reader)
                if request is None:
                    break
                request.peer, request.nth = peer, nth
                self.received.append(request)
                if not await self._respond(request, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:  # the server is stopping: end quietly
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> Received | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        at = time.perf_counter()
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        raw = await reader.readexactly(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        return Received(method, path, headers, body, at)

    async def _respond(self, request: Received, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        if request.method == "GET" and request.path.rstrip("/").endswith("/models"):
            data = [{"id": name, "object": "model", "created": CREATED, "owned_by": "scripted"}
                     for name in self.scripts]
            await _send_json(writer, 200, {"object": "list", "data": data})
            return True
        if request.method != "POST" or not request.path.endswith("/chat/completions"):
            await _send_json(writer, 404, {"error": {"message": f"no route {request.path}", "code": "not_found"}})
            return True
        body = request.body if isinstance(request.body, dict) else {}
        model = str(body.get("model", ""))
        script = self.scripts.get(model, Script(status=404))
        if script.fault == "hang":
            try:  # never send the headers
                await asyncio.wait_for(self._stopping.wait(), self.hang_limit_s)  # type: ignore[union-attr]
            except asyncio.TimeoutError:
                pass
            return False
        if script.status != 200:
            await _send_error(writer, script, request, model)
            return True
        return await _stream(writer, script, request, model)


async def _send_json(writer: asyncio.StreamWriter, status: int, data: Any,
                     extra: dict[str, str] | None = None) -> None:
    body = _json(data)
    conn = _Conn(writer, chunked=False)
    await conn.head(status, {"content-type": "application/json", "content-length": str(len(body)),
                             **(extra or {})})
    writer.write(body)
    await writer.drain()


async def _send_error(writer: asyncio.StreamWriter, script: Script, request: Received, model: str) -> None:
    auth = request.headers.get("authorization", "")
    key = auth.removeprefix("Bearer ").strip()
    if script.status == 502:  # a proxy's page, not the API's JSON; it shows the URL it was asked for
        page = HTML_502.format(key_url=quote(key, safe="")).encode()
        conn = _Conn(writer, chunked=False)
        await conn.head(502, {"content-type": "text/html", "content-length": str(len(page))})
        writer.write(page)
        await writer.drain()
        return
    template = ERROR_BODIES.get(script.status, ERROR_BODIES[500])
    # servers do echo what they were sent: the client must redact it
    error = {k: v.format(key=key, model=model) if isinstance(v, str) else v for k, v in template.items()}
    if script.echo_key:  # as a careless proxy or a debug build does
        error["message"] = f"{error.get('message') or ''} (sent {auth!r}, {quote(key, safe='')})"
    extra = {"retry-after": script.retry_after} if script.retry_after else {}
    await _send_json(writer, script.status, {"error": error}, extra)


def _chunk(cid: str, model: str, choices: list[Any], null_usage: bool, **more: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": CREATED, "model": model,
                            "system_fingerprint": "fp_scripted", "choices": choices}
    if null_usage:  # with include_usage, OpenAI sends "usage":null on every other chunk
        data["usage"] = None
    data.update(more)
    return data


def _choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


async def _stream(writer: asyncio.StreamWriter, script: Script, request: Received, model: str) -> bool:
    body = request.body
    usage = bool((body.get("stream_options") or {}).get("include_usage"))
    limit = body.get("max_tokens") or body.get("max_completion_tokens")
    count = min(script.tokens, int(limit)) if limit else script.tokens
    finish = "length" if count < script.tokens else script.finish_reason
    cid = f"chatcmpl-scripted{int(request.at * 1e6) % 10**9}"
    conn = _Conn(writer, script.chunked)
    headers = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache",
               "x-request-id": cid}
    headers.update({"transfer-encoding": "chunked"} if script.chunked else {"connection": "close"})
    await conn.head(200, headers)
    loop = asyncio.get_running_loop()
    start = loop.time() - (time.perf_counter() - request.at)  # the request's arrival on the loop clock
    ttft = script.ttft_s + random.Random(int(request.at * 1e6)).uniform(0, script.ttft_jitter_s)
    if script.empty_first_chunk:
        await conn.event({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                          "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]})
    await conn.event(_chunk(cid, model, [_choice({"role": "assistant", "content": "", "refusal": None})], usage))
    cut = script.fault_after if script.fault in ("drop", "no_finish", "malformed", "error_event") else None
    for i in range(count if cut is None else min(cut, count)):
        await asyncio.sleep(max(0.0, start + ttft + i * script.interval_s - loop.time()))
        await conn.event(_chunk(cid, model, [_choice({"content": script.token(i)})], usage))
        request.events.append(time.perf_counter())
        request.first_token_at = request.first_token_at or request.events[-1]
    if script.fault == "drop":  # no terminating chunk: the peer just goes away
        return False
    if script.fault == "malformed":
        await conn.send(b'data: {"id":"' + cid.encode() + b'","choices":[{"delta":{"content":"oops"}\n\n')
    elif script.fault == "error_event":
        await conn.event({"error": {"message": "The model overloaded mid-answer", "type": "server_error"}})
    elif script.fault is None:
        await conn.event(_chunk(cid, model, [_choice({}, finish)], usage))
        if usage:
            figures: dict[str, Any] = {
                "prompt_tokens": script.prompt_tokens, "completion_tokens": script.usage_tokens or count,
                "total_tokens": script.prompt_tokens + (script.usage_tokens or count)}
            if script.cached_tokens is not None:
                figures["prompt_tokens_details"] = {"cached_tokens": script.cached_tokens, "audio_tokens": 0}
                figures["completion_tokens_details"] = {"reasoning_tokens": 0, "audio_tokens": 0,
                                                        "accepted_prediction_tokens": 0,
                                                        "rejected_prediction_tokens": 0}
            await conn.event(_chunk(cid, model, [], False, usage=figures))
        await conn.event(b"[DONE]")
    await conn.end()
    return script.chunked


# --- in a separate process, for benchmarks -------------------------------------------------
def _serve_child(scripts: dict[str, Script], pipe: Any) -> None:
    with ScriptedServer(scripts) as server:
        pipe.send(server.port)
        try:
            pipe.recv()  # any message stops the server; so does the parent going away
        except EOFError:
            return
    pipe.send(server.received)  # perf_counter is system-wide on Linux: times compare across processes
    pipe.close()


class ServerProcess:
    """The same server in its own process: its timing never waits on the client's GIL."""

    def __init__(self, scripts: dict[str, Script]):
        self.scripts = scripts
        self.port = 0
        self.received: list[Received] = []  # filled in when the server stops
        self._process: multiprocessing.process.BaseProcess | None = None
        self._pipe: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> ServerProcess:
        ctx = multiprocessing.get_context("spawn")
        self._pipe, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve_child, args=(self.scripts, child), daemon=True)
        self._process.start()
        try:
            if not self._pipe.poll(30.0):
                raise RuntimeError("scripted server process did not start")
            self.port = self._pipe.recv()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is None:
            return
        try:
            self._pipe.send("stop")
            if self._pipe.poll(10.0):
                self.received = self._pipe.recv()
        except (OSError, ValueError, EOFError):
            pass
        self._process.join(10.0)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5.0)
        self._pipe.close()
        self._process = None


def openai_target(base_url: str, model: str, api_key_env: str, **more: Any) -> Any:
    """An ``openai`` catalog target for ``model`` on this server, its key in ``api_key_env``."""
    from playground.catalog import Target

    return Target(id=f"test/{model}", label=model, backend="openai", model=model, base_url=base_url,
                  api_key_env=api_key_env, **more)


def module_server(scripts: dict[str, Script]) -> Any:
    """A module-scoped pytest fixture serving ``scripts``; always stopped."""
    import pytest

    @pytest.fixture(scope="module")
    def server() -> Any:
        with ScriptedServer(scripts) as srv:
            yield srv

    return server
