"""``BackendError`` is the ground floor's one exception: it pickles as itself (so it crosses from a
model process unchanged) and keeps the HTTP status where there was one."""

from __future__ import annotations

import pickle

from playground.errors import BackendError, ErrorKind
from tests.sse_server import Script, ScriptedServer


def test_a_backend_error_pickles_as_itself() -> None:
    error = BackendError(ErrorKind.RATE_LIMITED, "429 rate limited: retry in 7 s", retry_after=7.0, status=429)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is BackendError and str(again) == error.message
    assert (again.kind, again.message, again.retry_after, again.status) == (ErrorKind.RATE_LIMITED, error.message, 7.0, 429)


def test_anything_else_becomes_an_internal_error_naming_its_type() -> None:
    wrapped = BackendError.wrap(ValueError("bad shape"))
    assert wrapped.kind is ErrorKind.INTERNAL and wrapped.message == "ValueError: bad shape"
    same = BackendError(ErrorKind.TIMEOUT, "slow")
    assert BackendError.wrap(same) is same


async def test_an_http_error_keeps_its_status() -> None:
    from playground.backends import make_backend
    from playground.catalog import Target
    from playground.request import ChatRequest, Message, make_params

    with ScriptedServer({"busy": Script(status=429, retry_after="3")}) as server:
        target = Target(id="t", label="t", backend="openai", model="busy", base_url=server.base_url)
        request = ChatRequest((Message("user", "hi"),), make_params(max_tokens=4))
        try:
            async for _ in make_backend(target).stream(request):
                pass
        except BackendError as exc:
            assert exc.status == 429 and exc.kind is ErrorKind.RATE_LIMITED and exc.retry_after == 3
        else:
            raise AssertionError("no error")
