"""Start-up work that must never land on an event loop during a run.

The HTTP libraries import much of themselves lazily on their first request (aiohttp's
connector and SSL contexts, 0.15 s; the ollama SDK's models), and the token-estimate tokenizer
takes 0.2 s to load. All of it happens here, in a thread at start-up, so the first page is not
delayed and the first run's stamps are not bent: the OpenAI-compatible backend streams one
answer from a loopback server of its own, and the ollama SDK one from an in-memory transport
(nothing leaves the machine). The measurement loop starts here too.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import logging
import threading
from typing import Any

from playground import environment, measure_process, roofline, tokens
from playground.backends import REGISTRY
from playground.clock import measure_loop

log = logging.getLogger(__name__)
LOOPBACK = "http://127.0.0.1:9"  # never contacted: the ollama SDK's in-memory transport answers
WARM_TIMEOUT_S = 5.0

_SSE = b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in [
    {"id": "w", "object": "chat.completion.chunk", "created": 0, "model": "w",
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": None}]},
    {"id": "w", "object": "chat.completion.chunk", "created": 0, "model": "w",
     "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"id": "w", "object": "chat.completion.chunk", "created": 0, "model": "w", "choices": [],
     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}},
]) + b"data: [DONE]\n\n"
_NDJSON = (b'{"model":"w","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant","content":"ok"},"done":false}\n'
           b'{"model":"w","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant","content":""},'
           b'"done":true,"done_reason":"stop","eval_count":1,"eval_duration":1000}\n')


async def _openai() -> None:
    """One real stream through the backend, from a loopback server that answers with ``_SSE``."""
    from playground.backends.openai_compat import OpenAICompatBackend
    from playground.catalog import Target
    from playground.request import ChatRequest, Message

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # a GET /models (the connection's warm-up), then the POST
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                body = _SSE if head.startswith(b"POST") else b"{}"
                kind = b"text/event-stream" if head.startswith(b"POST") else b"application/json"
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: " + kind + b"\r\ncontent-length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        backend = OpenAICompatBackend(Target(id="warm-up", label="warm-up", backend="openai", model="w",
                                             base_url=f"http://127.0.0.1:{port}/v1", timeout_s=WARM_TIMEOUT_S))
        async for _ in backend.stream(ChatRequest((Message("user", "hi"),))):
            pass
    finally:
        server.close()  # the stream closed its own session


async def _ollama() -> None:
    import httpx
    import ollama

    def answer(request: Any) -> Any:
        return httpx.Response(200, headers={"content-type": "application/x-ndjson"}, content=_NDJSON)

    client = ollama.AsyncClient(host=LOOPBACK, transport=httpx.MockTransport(answer))
    async for _ in await client.chat(model="w", messages=[{"role": "user", "content": "hi"}], stream=True):
        pass
    ollama.AsyncClient(host=LOOPBACK)  # a real transport: SSL context, pool


def warm_sdks(stream: bool = True) -> None:
    """Import every backend and (``stream``) stream once through each SDK (no network). Blocking."""
    for path in REGISTRY.values():
        try:
            importlib.import_module(path.partition(":")[0])
        except Exception as exc:  # noqa: BLE001 - the run will say what is wrong in its column
            log.debug("warm-up could not import %s: %s", path, exc)
    for sdk in (_openai, _ollama) if stream else ():
        try:
            asyncio.run(sdk())
        except Exception as exc:  # noqa: BLE001 - warming is best effort
            log.debug("warm-up of %s failed: %s", sdk.__name__, exc)


def _warm() -> None:
    measure_loop()
    warm_sdks(stream=measure_process.mode() != "process")  # only there: every HTTP stream runs in the child
    tokens.preload(wait=True)
    environment.machine()  # library versions and the git revision, for the downloads
    # the roofline's bandwidth, measured while nothing decodes (a decode beside it would read both low)
    roofline.bandwidth_gb_s()
    if measure_process.enabled():
        try:
            measure_process.worker()
        except Exception as exc:  # noqa: BLE001 - the first run will try again and say why
            log.warning("the measurement process did not start: %s", exc)
    # A full garbage collection walks every object and holds the GIL throughout: with Gradio,
    # pydantic and the SDKs loaded that is 0.1 s, during which no loop can stamp anything.
    # What exists now lives as long as the app, so take it out of the collector's walks
    # (freezing is cheap; collecting first would itself be such a pause).
    gc.freeze()


_started = threading.Event()
_done = threading.Event()


def start() -> threading.Thread:
    def run() -> None:
        try:
            _warm()
        finally:
            _done.set()

    _started.set()
    thread = threading.Thread(target=run, name="playground-warmup", daemon=True)
    thread.start()
    return thread


def pending() -> bool:
    """True while start-up work is still going on (a run then waits: its stamps would bend)."""
    return _started.is_set() and not _done.is_set()


def wait(timeout_s: float) -> None:
    _done.wait(timeout_s)
