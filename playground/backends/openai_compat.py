"""Any OpenAI-compatible endpoint: GitHub Models, Azure AI Foundry, NVIDIA NIM, vLLM,
llama.cpp server, LM Studio, Ollama's /v1, ``transformers serve``.

The stream is read with aiohttp and decoded with the openai SDK's own SSE decoder, not through
the SDK's client: under a workshop's load (120 streams at 50 tok/s, 6,000 chunks a second on one
loop) the SDK's request building, httpx2 reading and typed chunks cost 220-330 us of Python a
chunk, and TTFT was 156 ms late at p95; aiohttp's C parser and plain dicts cost 26-45 us. The
wire format is the SDK's: a bearer key, a JSON body, ``data:`` events, ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, AsyncIterator, ClassVar, Mapping

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url  # trust_env's proxy choice, without its per-request netrc
from openai._streaming import SSEDecoder  # the SDK's spec-compliant decoder, on aiohttp's bytes
from pydantic import model_validator
from yarl import URL

from playground import secrets, settings, urls
from playground.backends.base import HttpBackend, KeyedHttpOptions
from playground.errors import READY, Availability, BackendError, ErrorKind
from playground.events import Event, Finished, RequestSent, TextDelta, Usage

if TYPE_CHECKING:
    from playground.catalog import Target
    from playground.request import ChatRequest

DEFAULT_CONNECT_TIMEOUT_S = 10.0
WARMUP_TIMEOUT_S = 3.0
ERROR_BODY_LIMIT = 64 * 1024  # bytes of an error response read for its message


class _Written:
    """Where aiohttp's tracing records when a request's bytes went to the socket."""

    at: float | None = None


async def _on_bytes_sent(session: aiohttp.ClientSession, context: Any, params: Any) -> None:
    written = context.trace_request_ctx
    if isinstance(written, _Written):
        written.at = time.perf_counter()  # the last write wins: the whole request is out


_TRACE = aiohttp.TraceConfig()  # built once: every stream's session shares it (its handlers keep no state)
_TRACE.on_request_headers_sent.append(_on_bytes_sent)
_TRACE.on_request_chunk_sent.append(_on_bytes_sent)
_TRACE.freeze()


def _session(resolver: aiohttp.abc.AbstractResolver | None = None) -> aiohttp.ClientSession:
    # one connection: a session serves one stream (see OpenAICompatBackend.stream). Not trust_env:
    # that looks the host up in ~/.netrc (in a thread) for every request, and an entry for the host
    # (or a "default" one) made aiohttp refuse the request, which carries a bearer key; proxies: _proxy
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1, resolver=resolver), raise_for_status=False,
                                 trace_configs=[_TRACE])


_proxies: dict[tuple[str, tuple[str | None, ...]], dict[str, Any]] = {}
PROXY_CACHE_LIMIT = 256  # origins remembered (endpoints visitors typed add theirs)


async def _proxy(url: str) -> dict[str, Any]:
    """HTTP(S)_PROXY and NO_PROXY for ``url``, read as aiohttp's ``trust_env`` reads them (a proxy's
    credentials may come from ~/.netrc, for the proxy only), as the SDK's httpx client honours them:
    the request's ``proxy`` and ``proxy_auth``. Reading them scans the whole environment (the
    system's settings on macOS and Windows: a change there applies after a restart), so it is done
    in a thread, once per origin and proxy setting."""
    try:
        origin = URL(url).origin()
    except ValueError:
        return {}  # not an absolute URL: aiohttp says so, naming it, as it connects
    key = (str(origin), settings.proxy_settings())
    found = _proxies.get(key)
    if found is None:
        def read() -> dict[str, Any]:
            try:
                proxy, auth = get_env_proxy_for_url(origin)
            except LookupError:
                return {}
            except ValueError:  # the variable's value, which may hold a password, stays out of it
                raise BackendError(ErrorKind.UNAVAILABLE, f"the proxy for {origin} (HTTPS_PROXY or HTTP_PROXY) "
                                                          "is not a valid URL") from None
            return {"proxy": proxy, "proxy_auth": auth}

        found = await asyncio.to_thread(read)
        if len(_proxies) >= PROXY_CACHE_LIMIT:
            _proxies.clear()
        _proxies[key] = found
    return found


def redact(text: str, secret: str | None) -> str:
    """This request's key, and every other secret and header value (``secrets.redact``)."""
    if secret and len(secret) >= secrets.MIN_SECRET_LEN:
        text = text.replace(secret, secrets.MASK)
    return secrets.redact(text)


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    for header in ("retry-after", "x-ratelimit-timeremaining", "x-ratelimit-reset-requests"):
        value = headers.get(header)
        if value:
            try:
                return float(value.rstrip("s"))
            except ValueError:
                continue
    return None


def status_error(code: int, body: bytes, headers: Mapping[str, str], target: Target, key: str | None) -> BackendError:
    """An HTTP error answer as one clear line (the key never appears in it), with its status."""
    error = _by_status(code, body, headers, target, key)
    error.status = code
    return error


def _by_status(code: int, body: bytes, headers: Mapping[str, str], target: Target, key: str | None) -> BackendError:
    where = f"{target.model} at {target.options.base_url or target.options.base_url_env}"
    detail = redact(_error_detail(body, code), key)[:300]  # redacted whole, then cut: no half key
    if code == 401:
        return BackendError(ErrorKind.AUTH, f"401 unauthorized: check {target.options.api_key_env or 'the API key'} ({detail})")
    if code == 403:
        return BackendError(ErrorKind.AUTH, f"403 forbidden: the key in {target.options.api_key_env} may lack access to {target.model} ({detail})")
    if code == 404:
        return BackendError(ErrorKind.NOT_FOUND, f"404 not found: {where} ({detail})")
    if code == 429:
        wait = retry_after_s(headers)
        hint = f"retry in {wait:g} s" if wait is not None else "retry later"
        return BackendError(ErrorKind.RATE_LIMITED, f"429 rate limited: {hint} ({detail})", retry_after=wait)
    if code >= 500:
        return BackendError(ErrorKind.SERVER, f"{code} server error from {where} ({detail})")
    return BackendError(ErrorKind.BAD_REQUEST, f"{code} bad request: {detail}")


def transport_error(exc: BaseException, target: Target, key: str | None, mid_stream: bool) -> BackendError:
    """A failure of the connection or of the stream's content."""
    where = f"{target.model} at {target.options.base_url or target.options.base_url_env}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return BackendError(ErrorKind.TIMEOUT, f"timed out connecting to {where}")
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        waited = f"no data for {target.timeout_s:g} s"
        return BackendError(ErrorKind.TIMEOUT, f"read timed out from {where} ({waited})" if mid_stream
                            else f"{where} did not answer ({waited})")
    if mid_stream and isinstance(exc, (aiohttp.ClientError, ConnectionError)):
        # after the response began, a transport error means a cut stream
        return BackendError(ErrorKind.TRUNCATED, f"connection dropped mid-stream ({type(exc).__name__})")
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        reason = getattr(exc, "os_error", None) or exc
        return BackendError(ErrorKind.CONNECTION, f"cannot connect to {where}: {redact(str(reason) or type(exc).__name__, key)}")
    if isinstance(exc, ValueError):  # json.JSONDecodeError, bad UTF-8, a chunk of the wrong shape
        return BackendError(ErrorKind.SERVER, f"malformed stream from {where}: {redact(str(exc), key)[:200]}")
    return BackendError(ErrorKind.INTERNAL, f"{type(exc).__name__}: {redact(str(exc), key)}")


def _error_detail(body: bytes, code: int) -> str:
    """The server's own words about an error, whole: the caller redacts them, then cuts them short."""
    text = body.decode("utf-8", "replace")
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        inner = data.get("error", data)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
        if isinstance(inner, dict) and isinstance(inner.get("detail"), str):  # FastAPI: transformers serve
            return inner["detail"]
    first = text.strip().splitlines()[0] if text.strip() else f"HTTP {code}"
    return first


def _stream_error(data: Any) -> str | None:
    """The message of an error event inside the stream (``{"error": {...}}``), as the SDK reads it."""
    if isinstance(data, dict) and data.get("error"):
        error = data["error"]
        message = error.get("message") if isinstance(error, dict) else None
        return message if isinstance(message, str) and message else "An error occurred during streaming"
    return None


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


class OpenAIOptions(KeyedHttpOptions):
    model_env: str | None = None  # the model's name from this variable (or a visitor's form), else `model`

    @model_validator(mode="after")
    def _needs_a_url(self) -> OpenAIOptions:
        if not (self.base_url or self.base_url_env):
            raise ValueError("base_url: required for backend 'openai' (or give base_url_env)")
        return self


def cached_prompt_tokens(usage: Mapping[str, Any]) -> int | None:
    """How many prompt tokens the server read from its prompt cache, where it says
    (``prompt_tokens_details.cached_tokens``: OpenAI and Azure; vLLM with --enable-prompt-tokens-details)."""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return cached if type(cached) is int and cached >= 0 else None


class OpenAICompatBackend(HttpBackend):
    name: ClassVar[str] = "openai"
    Options = OpenAIOptions

    def _base_url(self, credentials: secrets.Credentials | None = None) -> tuple[str | None, bool]:
        """The endpoint, and whether a visitor typed it (a catalog's fixed URL is never replaced)."""
        if self.target.options.base_url:
            return self.target.options.base_url, False
        if credentials is not None and (typed := credentials.get(self.target.options.base_url_env)):
            return typed, True
        return settings.env(self.target.options.base_url_env or ""), False

    def _key(self, credentials: secrets.Credentials | None = None) -> tuple[str | None, bool]:
        """The key, and whether it is the visitor's own."""
        if credentials is not None and (typed := credentials.get(self.target.options.api_key_env)):
            return typed, True
        return secrets.env_key(self.target.options.api_key_env), False

    def _model(self, credentials: secrets.Credentials | None = None) -> str:
        name = self.target.options.model_env
        return (credentials.get(name) if credentials is not None else None) or \
            settings.env(name or "") or self.target.model

    def availability(self) -> Availability:
        missing, problems = [], []
        if self.target.options.base_url_env and not self.target.options.base_url and not settings.env(self.target.options.base_url_env):
            missing.append(self.target.options.base_url_env)
        if self.target.options.api_key_env and (problem := secrets.key_problem(self.target.options.api_key_env)):
            if problem.startswith("set "):
                missing.append(self.target.options.api_key_env)
            else:
                problems.append(problem)
        if missing:
            problems.insert(0, "set " + " and ".join(missing))
        if problems:
            return Availability("unavailable", "; ".join(problems))
        return READY

    def _headers(self, key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or 'not-needed'}", "Accept": "text/event-stream"}

    def _timeout(self) -> aiohttp.ClientTimeout:
        connect = self.target.options.connect_timeout_s or DEFAULT_CONNECT_TIMEOUT_S
        return aiohttp.ClientTimeout(total=None, connect=connect, sock_read=self.target.timeout_s)

    async def _warm(self, session: aiohttp.ClientSession, base_url: str, key: str | None,
                    proxy: dict[str, Any]) -> None:
        """Open the connection (TCP, TLS) now; whatever the answer, it is ignored."""
        try:
            async with session.get(f"{base_url}/models", headers=self._headers(key), allow_redirects=False, **proxy,
                                   timeout=aiohttp.ClientTimeout(total=WARMUP_TIMEOUT_S)) as response:
                await response.read()
        except Exception:  # noqa: BLE001 - warming is best effort
            pass

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        credentials = request.credentials
        (base_url, typed_url), (key, own_key) = self._base_url(credentials), self._key(credentials)
        if not base_url:
            raise BackendError(ErrorKind.UNAVAILABLE, f"set {self.target.options.base_url_env}")
        if credentials is not None and (typed_problem := credentials.problem(self.target.options.api_key_env)):
            raise BackendError(ErrorKind.UNAVAILABLE, typed_problem)
        if self.target.options.api_key_env and not key:
            raise BackendError(ErrorKind.UNAVAILABLE, secrets.key_problem(self.target.options.api_key_env) or "no key")
        if typed_url and key and not own_key:
            raise BackendError(ErrorKind.UNAVAILABLE, f"an endpoint you typed needs your own key too "
                                                      f"({self.target.options.api_key_env}): this server's keys go only to its own endpoints")
        base_url = base_url.rstrip("/")
        public_only = typed_url and credentials is not None and credentials.public_only
        if public_only:
            await urls.check_public(base_url)  # and the session's resolver checks again as it connects
        # A session of its own, with one connection: the one the warm-up opens is the one the request
        # goes on. In a shared pool another stream's request could take it first, and this one would
        # open a connection inside its TTFT (a fresh-clone CI run caught that).
        proxy = {} if public_only else await _proxy(base_url)  # a public Space's proxy is not for visitors' URLs
        session = _session(urls.PublicOnlyResolver() if public_only else None)
        try:
            await self._warm(session, base_url, key, proxy)
            async with aclosing(self._request(session, base_url, key, proxy, request)) as events:
                async for event in events:  # closing this closes the response before the session
                    yield event
        finally:
            await session.close()

    async def _request(self, session: aiohttp.ClientSession, base_url: str, key: str | None, proxy: dict[str, Any],
                       request: ChatRequest) -> AsyncIterator[Event]:
        credentials = request.credentials
        params = request.params
        body: dict[str, Any] = {
            "model": self._model(credentials),
            "messages": openai_messages(request),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        finish: str | None = None
        yield RequestSent()
        streaming = False
        written = _Written()
        try:
            async with session.post(f"{base_url}/chat/completions", json=body, headers=self._headers(key), **proxy,
                                    timeout=self._timeout(), trace_request_ctx=written,
                                    allow_redirects=False) as response:  # a key never follows a redirect
                if written.at is not None:
                    # the clock starts when the request reached the socket; on a busy loop that can
                    # be milliseconds after the request began (and no token can precede this event)
                    yield RequestSent(at=written.at)
                if 300 <= response.status < 400:
                    raise BackendError(ErrorKind.BAD_REQUEST, f"{response.status} redirect from {self.target.model} "
                                       f"at {base_url}: not followed (a key never goes where it was not sent)")
                if response.status >= 400:
                    raise status_error(response.status, await response.content.read(ERROR_BODY_LIMIT),
                                       response.headers, self.target, key)
                streaming = True
                async for sse in SSEDecoder().aiter_bytes(response.content.iter_any()):
                    if sse.data.startswith("[DONE]"):
                        break
                    chunk = json.loads(sse.data)
                    message = _stream_error(chunk)
                    if message is not None:
                        raise BackendError(ErrorKind.SERVER, f"server reported an error mid-stream: {redact(message, key)}")
                    usage = chunk.get("usage")
                    if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
                        yield Usage(usage.get("prompt_tokens"), usage["completion_tokens"], "server",
                                    cached_prompt_tokens(usage))
                    for choice in chunk.get("choices") or ():
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            yield TextDelta(content)
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
        except BackendError:
            raise
        except (AttributeError, TypeError) as exc:  # valid JSON of the wrong shape
            raise transport_error(ValueError(f"unexpected chunk shape ({exc})"), self.target, key, streaming) from None
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
            raise transport_error(exc, self.target, key, streaming) from None
        if finish is None:
            raise BackendError(ErrorKind.TRUNCATED, "the stream ended without a finish reason")
        yield Finished(finish)
