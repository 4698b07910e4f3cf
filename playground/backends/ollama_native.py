"""Ollama's native API through ``ollama.AsyncClient``, with the server's own timings.

Availability comes from ``GET /api/tags``. ``availability()`` is synchronous, so it
answers from a small per-host cache: a fresh entry is used as is; a stale one is
refreshed with one bounded GET (``TAGS_TIMEOUT_S``, 0.5 s; a closed port on loopback
answers in about a millisecond). The UI asks from Gradio's worker threads, never on a loop.
"""

from __future__ import annotations

import threading
import time
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, ClassVar

import httpx

from playground import secrets, settings
from playground.backends.base import HttpBackend, HttpOptions
from playground.errors import READY, Availability, BackendError, ErrorKind
from playground.backends.clients import LoopClients
from playground.events import Event, Finished, RequestSent, ServerTimings, TextDelta, Usage

if TYPE_CHECKING:
    import ollama

    from playground.catalog import Target
    from playground.request import ChatRequest

DEFAULT_HOST = "http://127.0.0.1:11434"
DEFAULT_CONNECT_TIMEOUT_S = 10.0
WARMUP_TIMEOUT_S = 3.0
TAGS_TIMEOUT_S = 0.5
TAGS_TTL_S = 10.0  # a good answer is kept this long
TAGS_FAIL_TTL_S = 2.0  # a bad one is rechecked sooner: the user may have just started Ollama
START_HINT = "start it with: ollama serve"

_clients: LoopClients["ollama.AsyncClient"] = LoopClients(lambda client: client._client.aclose())


@dataclass(frozen=True)
class Tags:
    """One look at a host's ``/api/tags``: the pulled models, or why we could not see them."""

    at: float
    models: frozenset[str] | None
    error: str | None = None

    def fresh(self, now: float) -> bool:
        return now - self.at < (TAGS_TTL_S if self.models is not None else TAGS_FAIL_TTL_S)


_tags: dict[str, Tags] = {}
_tags_lock = threading.Lock()


def host_for(target: Target) -> str:
    return target.options.base_url or settings.ollama_host() or DEFAULT_HOST


def new_client(host: str, timeout: httpx.Timeout) -> ollama.AsyncClient:
    """The ollama client sends OLLAMA_API_KEY to any host it is given: here only to OLLAMA_HOST's
    (or the default's), and stripped of surrounding whitespace."""
    import ollama

    client = ollama.AsyncClient(host=host, timeout=timeout)
    key = secrets.env_key("OLLAMA_API_KEY")
    ours = (settings.ollama_host() or DEFAULT_HOST).rstrip("/") == host.rstrip("/")
    client._client.headers.pop("authorization", None)
    if key and ours:
        client._client.headers["authorization"] = f"Bearer {key}"
    return client


def full_tag(model: str) -> str:
    """``phi3.5`` and ``phi3.5:latest`` name the same model."""
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


def refresh_tags(host: str, timeout_s: float = TAGS_TIMEOUT_S) -> Tags:
    """One bounded ``GET /api/tags``, remembered for the host. Blocking: call it off the loop."""
    import ollama

    try:
        with ollama.Client(host=host, timeout=timeout_s) as client:
            listed = client.list()
        entry = Tags(time.monotonic(), frozenset(full_tag(m.model) for m in listed.models if m.model))
    except (ConnectionError, httpx.ConnectError):
        entry = Tags(time.monotonic(), None, f"Ollama is not running at {host}")
    except httpx.TimeoutException:
        entry = Tags(time.monotonic(), None, f"Ollama at {host} did not answer within {timeout_s:g} s")
    except Exception as exc:  # noqa: BLE001 - ResponseError, a non-Ollama server, bad JSON
        entry = Tags(time.monotonic(), None, f"no Ollama answer at {host}: {str(exc)[:120]}")
    with _tags_lock:
        _tags[host] = entry
    return entry


def cached_tags(host: str) -> Tags:
    with _tags_lock:
        entry = _tags.get(host)
    if entry is not None and entry.fresh(time.monotonic()):
        return entry
    return refresh_tags(host)


def forget_tags() -> None:
    with _tags_lock:
        _tags.clear()


def _detail(exc: Exception) -> str:
    """The server's first line about the error, redacted whole and then cut: a key across the cut
    would otherwise leave its first half for ``redact`` to miss."""
    text = secrets.redact(str(getattr(exc, "error", None) or exc))
    return (text.splitlines() or [""])[0][:300] if str(exc) else type(exc).__name__


def map_error(exc: Exception, target: Target, host: str) -> BackendError:
    """One clear line per failure, with the command that fixes it where there is one (and the HTTP
    status where there was one)."""
    import ollama

    error = _mapped(exc, target, host)
    if isinstance(exc, ollama.ResponseError) and exc.status_code > 0:
        error.status = exc.status_code
    return error


def _mapped(exc: Exception, target: Target, host: str) -> BackendError:
    import ollama

    if isinstance(exc, ollama.ResponseError):
        code, detail = exc.status_code, _detail(exc)
        if code == 404 and ("pull" in detail or target.model in detail):
            return BackendError(ErrorKind.NOT_FOUND, f"{target.model} is not on the Ollama server at {host}: "
                                f"run: ollama pull {target.model} ({detail})")
        if code == 404:
            return BackendError(ErrorKind.NOT_FOUND, f"404 from {host}: is it an Ollama server? ({detail})")
        if code in (401, 403):
            return BackendError(ErrorKind.AUTH, f"{code} from Ollama at {host}: check OLLAMA_API_KEY ({detail})")
        if code == 429:
            return BackendError(ErrorKind.RATE_LIMITED, f"429 rate limited by Ollama at {host} ({detail})")
        if code >= 500:
            return BackendError(ErrorKind.SERVER, f"{code} server error from Ollama at {host} ({detail})")
        if code == -1:  # an {"error": ...} line inside the stream
            return BackendError(ErrorKind.SERVER, f"Ollama reported an error mid-stream: {detail}")
        return BackendError(ErrorKind.BAD_REQUEST, f"{code} bad request: {detail}")
    if isinstance(exc, (ConnectionError, httpx.ConnectError)):
        return BackendError(ErrorKind.CONNECTION, f"cannot connect to Ollama at {host}: {START_HINT}")
    if isinstance(exc, httpx.TimeoutException):
        return BackendError(ErrorKind.TIMEOUT, f"timed out waiting for Ollama at {host}")
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        return BackendError(ErrorKind.TRUNCATED, f"connection dropped mid-stream ({type(exc).__name__})")
    if isinstance(exc, ValueError):  # a line that is not JSON, or not a chat chunk
        return BackendError(ErrorKind.SERVER, f"malformed stream from {host}: {secrets.redact(str(exc))[:200]}")
    return BackendError.wrap(exc)


def timings(final: Any) -> ServerTimings:
    """The final chunk's counters; durations arrive in nanoseconds."""

    def seconds(ns: int | None) -> float | None:
        return None if ns is None else ns / 1e9

    decode = None
    if final.eval_count and final.eval_duration:
        decode = final.eval_count / (final.eval_duration / 1e9)
    return ServerTimings(
        decode_tokens_per_s=decode,
        prompt_eval_s=seconds(final.prompt_eval_duration),
        load_s=seconds(final.load_duration),
        output_tokens=final.eval_count,
        prompt_tokens=final.prompt_eval_count,
        total_s=seconds(final.total_duration),
    )


class OllamaOptions(HttpOptions):
    """The server (``base_url``, else OLLAMA_HOST); its key, if any, is OLLAMA_API_KEY, for that host only."""

    keep_alive: str | None = None  # how long Ollama keeps the model loaded after a request ("5m", "-1")


class OllamaBackend(HttpBackend):
    name: ClassVar[str] = "ollama"
    Options = OllamaOptions

    def __init__(self, target: Target):
        super().__init__(target)
        self.host = host_for(target)

    def availability(self) -> Availability:
        tags = cached_tags(self.host)
        if tags.models is None:
            return Availability("unavailable", f"{tags.error}: {START_HINT}")
        if full_tag(self.target.model) not in tags.models:
            return Availability("unavailable", f"not pulled yet: run: ollama pull {self.target.model}")
        return READY

    async def _client(self) -> ollama.AsyncClient:
        """One client per host and event loop, its connection opened before any clock starts."""
        connect = self.target.options.connect_timeout_s or DEFAULT_CONNECT_TIMEOUT_S
        client, new = await _clients.get(self.host, lambda: new_client(
            self.host, httpx.Timeout(self.target.timeout_s, connect=connect)))
        if new:
            try:  # best effort: open the TCP connection now
                await client._client.get("/api/version", timeout=WARMUP_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - the real request reports any problem
                pass
        return client

    def _options(self, request: ChatRequest) -> dict[str, Any]:
        params = request.params
        options: dict[str, Any] = {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "num_predict": params.max_tokens,
        }
        if params.seed is not None:
            options["seed"] = params.seed
        return options

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        import ollama

        client = await self._client()
        final: Any = None
        yield RequestSent()
        try:
            chunks = await client.chat(
                model=self.target.model,
                messages=ollama_messages(request),
                stream=True,
                options=self._options(request),
                keep_alive=self.target.options.keep_alive,
            )
            async with aclosing(chunks):  # closing this stream closes Ollama's response at once
                async for chunk in chunks:
                    if chunk.message is not None and chunk.message.content:
                        yield TextDelta(chunk.message.content)
                    if chunk.done:
                        final = chunk
        except (ollama.ResponseError, ConnectionError, httpx.HTTPError, ValueError) as exc:
            raise map_error(exc, self.target, self.host) from None
        if final is None:
            raise BackendError(ErrorKind.TRUNCATED, "the stream ended without Ollama's final chunk (done: true)")
        if final.eval_count is not None:
            yield Usage(final.prompt_eval_count, final.eval_count, "server")
        yield timings(final)
        yield Finished(final.done_reason or "stop")


def ollama_messages(request: ChatRequest) -> list[dict[str, Any]]:
    """Ollama's ``/api/chat`` messages: a user message's pictures as ``images`` (raw bytes; the
    ollama client base64-encodes them)."""
    return [{"role": m.role, "content": m.content, **({"images": [i.data for i in m.images]} if m.images else {})}
            for m in request.messages]
