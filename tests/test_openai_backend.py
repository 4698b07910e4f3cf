"""The openai backend (the real openai SDK) against the scripted loopback server."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from sse_server import Script, ScriptedServer, module_server, openai_target, text_of

from playground.backends import make_backend
from playground.errors import BackendError
from playground.catalog import Target
from playground.events import ErrorKind, Event, Finished, RequestSent, TextDelta, Usage
from playground.report import run_document
from playground.request import ChatRequest, Message, make_params
from playground.runner import Column, Job, run_to_end

pytestmark = pytest.mark.usefixtures("close_clients")  # the HTTP clients a test's loop made

KEY_ENV, KEY = "PLAYGROUND_TEST_KEY", "sk-test-SECRET123456"
TTFT_S = 0.25
SCRIPTS = {
    "five": Script(tokens=5),
    "cached-prompt": Script(tokens=5, prompt_tokens=45, cached_tokens=41),
    "ten": Script(tokens=10, interval_s=0.005),
    "slow-start": Script(tokens=4, ttft_s=TTFT_S, interval_s=0.01),
    "azure-like": Script(tokens=4, ttft_s=TTFT_S, interval_s=0.01, empty_first_chunk=True),
    "close-delimited": Script(tokens=6, chunked=False),
    "drop": Script(tokens=10, fault="drop", fault_after=3),
    "drop-close-delimited": Script(tokens=10, fault="drop", fault_after=3, chunked=False),
    "no-finish": Script(tokens=10, fault="no_finish", fault_after=4),
    "malformed": Script(tokens=10, fault="malformed", fault_after=2),
    "error-event": Script(tokens=10, fault="error_event", fault_after=2),
    "hang": Script(fault="hang"),
    "stall": Script(tokens=3, interval_s=2.0),
    **{f"http-{code}": Script(status=code, retry_after="7" if code == 429 else None)
       for code in (401, 403, 404, 429, 500, 503)},
}


server = module_server(SCRIPTS)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def target(base_url: str, model: str, **more: Any) -> Target:
    return openai_target(base_url, model, KEY_ENV, **more)


def request(**params: object) -> ChatRequest:
    return ChatRequest((Message("system", "be brief"), Message("user", "hello")), make_params(**params))


async def collect(t: Target, **params: object) -> tuple[list[tuple[float, Event]], BackendError | None]:
    """Every event with its arrival time, and the error that ended the stream, if any."""
    events: list[tuple[float, Event]] = []
    try:
        async for event in make_backend(t).stream(request(**params)):
            events.append((time.perf_counter(), event))
    except BackendError as exc:
        return events, exc
    return events, None


def texts(events: list[tuple[float, Event]]) -> str:
    return "".join(e.text for _, e in events if isinstance(e, TextDelta))


def free_closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_text_streams_in_order_with_server_usage(server: ScriptedServer) -> None:
    events, error = await collect(target(server.base_url, "ten"))
    assert error is None
    kinds = [type(e) for _, e in events]
    assert kinds[0] is RequestSent and kinds[-1] is Finished
    assert texts(events) == text_of(10)
    assert all(e.text for _, e in events if isinstance(e, TextDelta))
    usage = [e for _, e in events if isinstance(e, Usage)]
    assert usage == [Usage(prompt_tokens=11, completion_tokens=10, source="server")]
    assert events[-1][1] == Finished("stop")


async def test_the_request_on_the_wire(server: ScriptedServer) -> None:
    events, error = await collect(target(server.base_url, "five"), max_tokens=64, temperature=0.0, seed=42)
    assert error is None
    [sent] = server.chat_requests("five")[-1:]
    body = sent.body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    assert (body["max_tokens"], body["temperature"], body["seed"]) == (64, 0.0, 42)
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"] == "application/json"


async def test_connection_is_warmed_before_the_clock_starts(server: ScriptedServer) -> None:
    before = len(server.received)
    await collect(target(server.base_url, "five"))
    warm, chat = server.received[before:]
    assert (warm.method, warm.path) == ("GET", "/v1/models")
    assert (chat.method, chat.path) == ("POST", "/v1/chat/completions")
    assert chat.peer == warm.peer and chat.nth > warm.nth  # the measured request reused it


async def test_the_clock_starts_when_the_request_reaches_the_socket(server: ScriptedServer) -> None:
    events, error = await collect(target(server.base_url, "slow-start"))
    assert error is None
    sent = [e for _, e in events if isinstance(e, RequestSent)]
    first_text = next(i for i, (_, e) in enumerate(events) if isinstance(e, TextDelta))
    last_sent = max(i for i, (_, e) in enumerate(events) if isinstance(e, RequestSent))
    assert isinstance(events[0][1], RequestSent) and last_sent < first_text
    # the backend restamps the start with when aiohttp wrote the request: before the server read it
    assert len(sent) == 2 and sent[0].at is None and sent[1].at is not None
    received = server.chat_requests("slow-start")[-1]
    assert sent[1].at <= received.at, (sent[1].at, received.at)


async def test_a_netrc_entry_for_the_host_does_not_break_the_request(server: ScriptedServer, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A ~/.netrc "default" entry (or one for the API's host) is common on developers' machines;
    with aiohttp's trust_env every request failed ("Cannot combine AUTHORIZATION header ...")."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password netrc-PASSWORD123\ndefault login x password y\n")
    monkeypatch.setenv("NETRC", str(netrc))
    events, error = await collect(target(server.base_url, "five"))
    assert error is None and texts(events) == text_of(5)
    sent = server.chat_requests("five")[-1]
    assert sent.headers["authorization"] == f"Bearer {KEY}"  # the target's key, not the netrc login


async def test_the_environments_proxy_is_used_and_no_proxy_honoured(server: ScriptedServer,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY as the SDK's httpx client honours it. The scripted server stands in for the
    proxy: a request through a proxy names the whole URL, here one where nothing listens (the
    proxy is asked for it). NO_PROXY then sends the request direct."""
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.base_url.rsplit("/v1", 1)[0])
    nowhere = f"http://127.0.0.1:{free_closed_port()}/v1"
    events, error = await collect(target(nowhere, "five"))
    assert error is None and texts(events) == text_of(5)
    warm, chat = server.received[-2:]
    assert (warm.path, chat.path) == (f"{nowhere}/models", f"{nowhere}/chat/completions")

    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_closed_port()}")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    before = len(server.received)
    events, error = await collect(target(server.base_url, "five"))
    assert error is None and texts(events) == text_of(5)
    assert [r.path for r in server.received[before:]] == ["/v1/models", "/v1/chat/completions"]


async def test_a_base_url_without_a_scheme_or_a_broken_proxy_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    port = free_closed_port()
    monkeypatch.setenv("PLAYGROUND_TEST_URL", f"127.0.0.1:{port}/v1")  # no http://: the catalog checks its own
    from_env = Target(id="test/from-env", label="from env", backend="openai", model="five",
                      base_url_env="PLAYGROUND_TEST_URL", api_key_env=KEY_ENV)
    _, error = await collect(from_env)
    assert error is not None and error.kind is ErrorKind.CONNECTION, error
    assert f"127.0.0.1:{port}" in error.message

    monkeypatch.setenv("HTTP_PROXY", "http://user:proxy-PASSWORD123@[::1")  # unbalanced bracket
    _, error = await collect(target(f"http://127.0.0.1:{port}/v1", "five"))
    assert error is not None and error.kind is ErrorKind.UNAVAILABLE, error
    assert "proxy" in error.message and "not a valid URL" in error.message
    assert "PASSWORD123" not in error.message


async def test_targets_sharing_an_endpoint_each_get_a_warm_connection(server: ScriptedServer) -> None:
    await run_to_end([Job(target(server.base_url, "five"), request())])  # this loop's client exists now
    before = len(server.received)
    columns = await run_to_end([Job(target(server.base_url, "ten"), request()) for _ in range(4)])
    assert [c.status for c in columns] == ["done"] * 4
    chats = [r for r in server.received[before:] if r.method == "POST"]
    assert len(chats) == 4 and len({r.peer for r in chats}) == 4
    assert all(r.nth >= 1 for r in chats), [(r.peer, r.nth) for r in chats]  # no connect inside TTFT


async def test_a_prompt_the_server_took_from_its_cache_is_said_in_the_column(server: ScriptedServer) -> None:
    """A server that reused part of the prompt from its cache says so in its usage; its TTFT then
    leaves that part's evaluation out, and the column says so, as do the exports and a replay."""
    from playground.records import column_entry
    from playground.replay import Replay
    from playground.ui_format import status_markdown

    [cached, plain] = await run_to_end([Job(target(server.base_url, "cached-prompt"), request()),
                                        Job(target(server.base_url, "five"), request())])
    assert cached.status == plain.status == "done"
    assert cached.usage == Usage(45, 5, "server", 41) and plain.usage == Usage(11, 5, "server", None)
    assert "prompt cache: 41 of 45 prompt tokens reused by the server" in status_markdown(cached)
    assert "prompt cache" not in status_markdown(plain)
    document = run_document("hello", "be brief", request().params, [cached, plain])
    entries = document["results"]
    assert [(e["prompt_tokens"], e["cached_prompt_tokens"]) for e in entries] == [(45, 41), (11, None)]

    document["timelines"] = [column_entry(c) for c in (cached, plain)]  # as the run database keeps it
    replayed: list[Column] = []
    async for replayed in Replay(document, None).frames():
        pass
    assert "prompt cache: 41 of 45" in status_markdown(replayed[0])


def test_cached_tokens_are_read_only_where_they_are_a_count() -> None:
    from playground.backends.openai_compat import cached_prompt_tokens

    assert cached_prompt_tokens({"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": 0}}) == 0
    for bad in ({}, {"prompt_tokens_details": None}, {"prompt_tokens_details": {"cached_tokens": "41"}},
                {"prompt_tokens_details": {"cached_tokens": -1}}, {"prompt_tokens_details": {"cached_tokens": True}}):
        assert cached_prompt_tokens(bad) is None


async def test_max_tokens_cut_is_finish_length(server: ScriptedServer) -> None:
    events, error = await collect(target(server.base_url, "ten"), max_tokens=3)
    assert error is None
    assert texts(events) == text_of(3)
    assert events[-1][1] == Finished("length")


async def test_close_delimited_stream_works(server: ScriptedServer) -> None:
    events, error = await collect(target(server.base_url, "close-delimited"))
    assert error is None and texts(events) == text_of(6)


@pytest.mark.parametrize("model", ["slow-start", "azure-like"])
async def test_ttft_close_to_scripted_and_not_fooled_by_empty_chunks(server: ScriptedServer, model: str) -> None:
    await collect(target(server.base_url, "five"))  # warm this loop's client first
    events, error = await collect(target(server.base_url, model))
    assert error is None
    sent_at = next(at for at, e in events if isinstance(e, RequestSent))
    first_at = next(at for at, e in events if isinstance(e, TextDelta))
    ttft = first_at - sent_at
    received = server.chat_requests(model)[-1]
    assert received.first_token_at is not None
    server_ttft = received.first_token_at - received.at  # the server's own stamps, not its script
    assert server_ttft - 0.002 <= ttft <= server_ttft + 0.05, (ttft, server_ttft)
    assert not [e for _, e in events if isinstance(e, TextDelta) and not e.text]


async def test_runner_ttft_ignores_the_empty_choices_chunk(server: ScriptedServer) -> None:
    [column] = await run_to_end([Job(target(server.base_url, "azure-like"), request())])
    assert column.status == "done", column.error
    m = column.metrics()
    received = server.chat_requests("azure-like")[-1]
    assert received.first_token_at is not None
    server_ttft = received.first_token_at - received.at
    bound = 0.03 + column.clock_lag_s  # or the error bar the column reports
    assert m.ttft_s is not None and server_ttft - 0.002 <= m.ttft_s <= server_ttft + bound, (m.ttft_s, server_ttft)
    assert m.output_tokens == 4 and m.tokens_source == "server"


HTTP_CASES = {
    401: (ErrorKind.AUTH, r"^401 unauthorized: check PLAYGROUND_TEST_KEY"),
    403: (ErrorKind.AUTH, r"^403 forbidden: .*No access to model: http-403"),
    404: (ErrorKind.NOT_FOUND, r"^404 not found: http-404 at http://127\.0\.0\.1:\d+/v1 .*Unknown model"),
    429: (ErrorKind.RATE_LIMITED, r"^429 rate limited: retry in 7 s \("),
    500: (ErrorKind.SERVER, r"^500 server error from http-500 at "),
    503: (ErrorKind.SERVER, r"^503 server error from http-503 at .*overloaded"),
}


@pytest.mark.parametrize("code", sorted(HTTP_CASES))
async def test_http_error_is_one_clear_line_and_one_request(server: ScriptedServer, code: int) -> None:
    model = f"http-{code}"
    before = len(server.chat_requests(model))
    events, error = await collect(target(server.base_url, model))
    kind, pattern = HTTP_CASES[code]
    assert error is not None
    assert error.kind is kind
    assert re.search(pattern, error.message), error.message
    assert "\n" not in error.message and len(error.message) < 400
    assert (error.retry_after == 7) if code == 429 else error.retry_after is None
    assert KEY not in error.message
    assert len(server.chat_requests(model)) == before + 1  # no silent retry
    assert not [e for _, e in events if isinstance(e, (TextDelta, Finished))]


async def test_key_echoed_by_the_server_is_redacted(server: ScriptedServer) -> None:
    _, error = await collect(target(server.base_url, "http-401"))
    assert error is not None
    assert "Incorrect API key provided: ***" in error.message  # the server did send the key back
    assert KEY not in error.message


async def test_keys_go_only_where_they_belong(server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-ambient-NOT-FOR-THIS")  # never picked up implicitly
    monkeypatch.setenv("OTHER_TEST_KEY", "sk-other-KEY987654")
    keyless = Target(id="keyless", label="keyless", backend="openai", model="five", base_url=server.base_url)
    base = target(server.base_url, "close-delimited")
    other = Target(**{**base.model_dump(), "api_key_env": "OTHER_TEST_KEY"})  # a catalog entry naming another key
    before = len(server.received)
    columns = await run_to_end([Job(t, request()) for t in (keyless, target(server.base_url, "ten"), other)])
    assert [c.status for c in columns] == ["done"] * 3
    sent = {r.body["model"]: r.headers.get("authorization") for r in server.received[before:] if r.method == "POST"}
    # one endpoint, three keys: each request carries its own target's key and no other
    assert sent == {"five": "Bearer not-needed", "ten": f"Bearer {KEY}",
                    "close-delimited": "Bearer sk-other-KEY987654"}
    assert not any("NOT-FOR-THIS" in (r.headers.get("authorization") or "") for r in server.received)


async def test_a_key_pasted_with_a_newline_is_sent_without_it(server: ScriptedServer,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY + "\n")  # secrets pasted from a file often end in one
    events, error = await collect(target(server.base_url, "five"))
    assert error is None, error
    assert server.chat_requests("five")[-1].headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize(("model", "pattern"), [("hang", r"^hang at .* did not answer \(no data for 0.5 s\)$"),
                                                ("stall", r"^read timed out from stall at .* \(no data for 0.5 s\)$")])
async def test_a_server_that_goes_quiet_times_out_with_its_wait(server: ScriptedServer, model: str, pattern: str) -> None:
    started = time.perf_counter()
    events, error = await collect(target(server.base_url, model, timeout_s=0.5))
    assert error is not None and error.kind is ErrorKind.TIMEOUT
    assert re.search(pattern, error.message), error.message
    assert time.perf_counter() - started < 5  # the read timeout, not the server's own limit
    assert not [e for _, e in events if isinstance(e, Finished)]


async def test_unknown_model_is_not_found(server: ScriptedServer) -> None:
    _, error = await collect(target(server.base_url, "no-such-model"))
    assert error is not None and error.kind is ErrorKind.NOT_FOUND
    assert "no-such-model" in error.message


async def test_connection_refused_is_a_connection_error() -> None:
    _, error = await collect(target(f"http://127.0.0.1:{free_closed_port()}/v1", "five", connect_timeout_s=2))
    assert error is not None and error.kind is ErrorKind.CONNECTION
    assert error.message.startswith("cannot connect to five at http://127.0.0.1:")
    assert KEY not in error.message


async def test_missing_key_is_unavailable(server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    before = len(server.received)
    _, error = await collect(target(server.base_url, "five"))
    assert error is not None and error.kind is ErrorKind.UNAVAILABLE and KEY_ENV in error.message
    assert len(server.received) == before  # nothing was sent anywhere


@pytest.mark.parametrize(("model", "sent"), [("drop", 3), ("drop-close-delimited", 3), ("no-finish", 4)])
async def test_cut_stream_is_an_error_never_success(server: ScriptedServer, model: str, sent: int) -> None:
    events, error = await collect(target(server.base_url, model))
    assert error is not None and error.kind is ErrorKind.TRUNCATED
    assert texts(events) == text_of(sent)
    assert not [e for _, e in events if isinstance(e, Finished)]

    [column] = await run_to_end([Job(target(server.base_url, model), request())])
    assert column.status == "error" and column.error_kind is ErrorKind.TRUNCATED
    assert re.match(r"^stream cut after ~?\d+ tokens: ", column.error or ""), column.error
    assert column.text == text_of(sent)  # the partial answer is kept


@pytest.mark.parametrize(("model", "pattern"), [
    ("malformed", r"^malformed stream from malformed at "),
    ("error-event", r"^server reported an error mid-stream: The model overloaded"),
])
async def test_broken_stream_content_is_a_clear_error(server: ScriptedServer, model: str, pattern: str) -> None:
    events, error = await collect(target(server.base_url, model))
    assert error is not None and error.kind is ErrorKind.SERVER
    assert re.search(pattern, error.message), error.message
    assert "\n" not in error.message
    assert texts(events) == text_of(2)


async def test_no_key_in_any_error_or_export(server: ScriptedServer) -> None:
    models = ["http-401", "http-403", "http-429", "http-500", "drop", "malformed", "five"]
    jobs = [Job(target(server.base_url, m), request()) for m in models]
    jobs.append(Job(target(f"http://127.0.0.1:{free_closed_port()}/v1", "refused"), request()))
    columns: list[Column] = await run_to_end(jobs)
    assert [c.status for c in columns].count("done") == 1
    document = run_document("hello", "be brief", make_params(), columns)
    assert KEY not in repr(document)
    assert all(KEY not in (c.error or "") for c in columns)


def test_an_error_is_redacted_before_it_is_cut_short() -> None:
    from playground.backends.openai_compat import status_error

    key = "sk-test-SECRET123456"
    target = Target(id="t", label="t", backend="openai", model="m", base_url="http://127.0.0.1:9/v1",
                    api_key_env="TEST_KEY")
    body = json.dumps({"error": {"message": "x" * 290 + " " + key}}).encode()  # the key across the cut
    message = status_error(401, body, {}, target, key).message
    assert "sk-test-SEC" not in message and "sk-t" not in message


async def test_no_organization_or_project_header_comes_from_the_environment(
        server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The openai SDK would send OPENAI_ORG_ID / OPENAI_PROJECT_ID to any endpoint; GitHub, NIM and
    Azure targets must get only what their catalog entry names."""
    monkeypatch.setenv("OPENAI_ORG_ID", "org-canary-ORG123456")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj_canary_PROJ123456")
    before = len(server.received)
    _, error = await collect(target(server.base_url, "five"))
    assert error is None, error
    sent = server.received[before:]
    assert any(r.method == "POST" for r in sent)
    for received in sent:  # the warm-up's GET too
        assert not {"openai-organization", "openai-project"} & set(received.headers), received.headers
        assert "canary" not in json.dumps(received.headers)
