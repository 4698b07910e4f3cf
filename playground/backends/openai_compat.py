"""Any OpenAI-compatible endpoint: GitHub Models, Azure AI Foundry, NVIDIA NIM, vLLM,
llama.cpp server, LM Studio, Ollama's /v1, ``transformers serve``."""

from __future__ import annotations

import asyncio
import hashlib
import os
import weakref
from typing import TYPE_CHECKING, Any, AsyncIterator, ClassVar

import httpx2 as httpx  # the openai SDK (3.x) runs on httpx2; its errors are not httpx's
import openai
from openai import AsyncOpenAI

from playground.backends.base import READY, Availability, BackendError
from playground.events import ErrorKind, Event, Finished, RequestSent, TextDelta, Usage

if TYPE_CHECKING:
    from playground.catalog import Target
    from playground.request import ChatRequest

DEFAULT_CONNECT_TIMEOUT_S = 10.0
WARMUP_TIMEOUT_S = 3.0
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], AsyncOpenAI]] = (
    weakref.WeakKeyDictionary()
)


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret and len(secret) >= 4 else text


def retry_after_s(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    for header in ("retry-after", "x-ratelimit-timeremaining", "x-ratelimit-reset-requests"):
        value = response.headers.get(header)
        if value:
            try:
                return float(value.rstrip("s"))
            except ValueError:
                continue
    return None


def map_error(exc: Exception, target: Target, key: str | None, mid_stream: bool = False) -> BackendError:
    """One clear line per failure; the key never appears in it."""
    where = f"{target.model} at {target.base_url or target.base_url_env}"
    if mid_stream and isinstance(exc, openai.APIConnectionError):
        # openai wraps transport errors met while reading the body too: after the response
        # began they mean a cut stream or a stalled read, not a failed connection
        cause = exc.__cause__ or exc
        if isinstance(exc, openai.APITimeoutError):
            return BackendError(ErrorKind.TIMEOUT, f"read timed out from {where}")
        return BackendError(ErrorKind.TRUNCATED, f"connection dropped mid-stream ({type(cause).__name__})")
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        detail = redact(_error_detail(exc), key)
        if code == 401:
            return BackendError(ErrorKind.AUTH, f"401 unauthorized: check {target.api_key_env or 'the API key'} ({detail})")
        if code == 403:
            return BackendError(ErrorKind.AUTH, f"403 forbidden: the key in {target.api_key_env} may lack access to {target.model} ({detail})")
        if code == 404:
            return BackendError(ErrorKind.NOT_FOUND, f"404 not found: {where} ({detail})")
        if code == 429:
            wait = retry_after_s(exc.response)
            hint = f"retry in {wait:g} s" if wait is not None else "retry later"
            return BackendError(ErrorKind.RATE_LIMITED, f"429 rate limited: {hint} ({detail})", retry_after=wait)
        if code >= 500:
            return BackendError(ErrorKind.SERVER, f"{code} server error from {where} ({detail})")
        return BackendError(ErrorKind.BAD_REQUEST, f"{code} bad request: {detail}")
    if isinstance(exc, openai.APITimeoutError):
        return BackendError(ErrorKind.TIMEOUT, f"timed out connecting to {where}")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return BackendError(ErrorKind.CONNECTION, f"cannot connect to {where}: {redact(str(cause) or type(cause).__name__, key)}")
    if isinstance(exc, openai.APIError):  # an error event inside the stream
        return BackendError(ErrorKind.SERVER, f"server reported an error mid-stream: {redact(exc.message, key)}")
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        return BackendError(ErrorKind.TRUNCATED, f"connection dropped mid-stream ({type(exc).__name__})")
    if isinstance(exc, httpx.TimeoutException):
        return BackendError(ErrorKind.TIMEOUT, f"read timed out from {where}")
    if isinstance(exc, ValueError):  # json.JSONDecodeError and friends from the SSE decoder
        return BackendError(ErrorKind.SERVER, f"malformed stream from {where}: {redact(str(exc), key)[:200]}")
    return BackendError(ErrorKind.INTERNAL, f"{type(exc).__name__}: {redact(str(exc), key)}")


def _error_detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
        if isinstance(inner, str):
            return inner[:300]
        if isinstance(inner, dict) and isinstance(inner.get("detail"), str):  # FastAPI: transformers serve
            return inner["detail"][:300]
    return (exc.message or "").splitlines()[0][:300]


def openai_messages(request: ChatRequest) -> list[dict[str, Any]]:
    """Chat messages; a user message with images becomes content parts, each image an
    ``image_url`` with a ``data:`` URI, ahead of the text (NIM asks for images first)."""
    out: list[dict[str, Any]] = []
    for m in request.messages:
        if not m.images:
            out.append({"role": m.role, "content": m.content})
            continue
        parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": i.data_uri()}} for i in m.images]
        parts.append({"type": "text", "text": m.content})
        out.append({"role": m.role, "content": parts})
    return out


class OpenAICompatBackend:
    name: ClassVar[str] = "openai"
    supports_vision: ClassVar[bool] = True

    def __init__(self, target: Target):
        self.target = target

    def _base_url(self) -> str | None:
        if self.target.base_url:
            return self.target.base_url
        return os.environ.get(self.target.base_url_env or "") or None

    def _key(self) -> str | None:
        return os.environ.get(self.target.api_key_env) if self.target.api_key_env else None

    def availability(self) -> Availability:
        missing = [n for n in (self.target.base_url_env, self.target.api_key_env)
                   if n and not os.environ.get(n) and not (n == self.target.base_url_env and self.target.base_url)]
        if missing:
            return Availability("unavailable", "set " + " and ".join(missing))
        return READY

    async def _client(self) -> AsyncOpenAI:
        """One client per endpoint and event loop (``stream`` opens a connection before any clock starts)."""
        base_url, key = self._base_url(), self._key()
        if not base_url:
            raise BackendError(ErrorKind.UNAVAILABLE, f"set {self.target.base_url_env}")
        if self.target.api_key_env and not key:
            raise BackendError(ErrorKind.UNAVAILABLE, f"set {self.target.api_key_env}")
        loop = asyncio.get_running_loop()
        per_loop = _clients.setdefault(loop, {})
        fingerprint = hashlib.sha256((key or "").encode()).hexdigest()[:16]
        cache_key = (base_url, fingerprint)
        client = per_loop.get(cache_key)
        if client is None:
            connect = self.target.connect_timeout_s or DEFAULT_CONNECT_TIMEOUT_S
            # in a thread: a new client builds an SSL context (loads the CA store, 0.1-0.2 s)
            client = await asyncio.to_thread(
                AsyncOpenAI,
                base_url=base_url,
                api_key=key or "not-needed",
                max_retries=0,  # a retry inside a measured request would corrupt its timing
                timeout=httpx.Timeout(self.target.timeout_s, connect=connect),
            )
            client = per_loop.setdefault(cache_key, client)
        return client

    async def _warm(self, client: AsyncOpenAI) -> None:
        """Open the connection (TCP, TLS) now; whatever the answer, it is ignored."""
        try:
            await client.get("/models", cast_to=httpx.Response, options={"timeout": WARMUP_TIMEOUT_S})
        except Exception:  # noqa: BLE001 - warming is best effort
            pass

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        key = self._key()
        client = await self._client()
        # warm every run, not once per client: targets sharing an endpoint each need a connection
        # of their own, and the pool drops idle ones after a few seconds
        await self._warm(client)
        params = request.params
        kwargs: dict[str, Any] = {
            "model": self.target.model,
            "messages": openai_messages(request),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            kwargs["seed"] = params.seed
        finish: str | None = None
        yield RequestSent()
        streaming = False
        try:
            stream = await client.chat.completions.create(**kwargs)
            streaming = True
            async with stream:
                async for chunk in stream:
                    if chunk.usage is not None and chunk.usage.completion_tokens is not None:
                        yield Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens, "server")
                    for choice in chunk.choices or []:
                        if choice.delta is not None and choice.delta.content:
                            yield TextDelta(choice.delta.content)
                        if choice.finish_reason:
                            finish = choice.finish_reason
        except BackendError:
            raise
        except (openai.OpenAIError, httpx.HTTPError, ValueError) as exc:
            raise map_error(exc, self.target, key, mid_stream=streaming) from None
        if finish is None:
            raise BackendError(ErrorKind.TRUNCATED, "the stream ended without a finish reason")
        yield Finished(finish)
