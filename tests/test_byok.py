"""Bring your own key: a visitor's keys are used for their runs only, a URL they type gets only
their own key, in public mode it must reach the public internet, and redirects are not followed."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from gradio_client import Client
from sse_server import Script, ScriptedServer

from playground.backends import make_backend
from playground.errors import BackendError
from playground.catalog import Catalog, Target
from playground.events import ErrorKind, Event
from playground.public import Policy
from playground.request import ChatRequest, Message, make_params
from playground.secrets import Credentials
from playground.settings import Settings
from playground.ui import KEY_FIELDS, build_ui, launch_options
from tests.test_ui import free_port, run_args

pytestmark = pytest.mark.usefixtures("close_clients")

SERVER_KEY, VISITOR_KEY = "sk-server-SECRET-0001", "sk-visitor-SECRET-0002"


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer({"five": Script(tokens=5), "typed-model": Script(tokens=3)}) as srv:
        yield srv


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BYOK_TEST_KEY", "BYOK_TEST_URL", "PLAYGROUND_ALLOW_PRIVATE_URLS"):
        monkeypatch.delenv(name, raising=False)


def keyed(base_url: str | None = None) -> Target:
    """A target whose key is in BYOK_TEST_KEY, and whose URL is base_url or BYOK_TEST_URL."""
    return Target(id="keyed", label="keyed", backend="openai", model="five", api_key_env="BYOK_TEST_KEY",
                  **({"base_url": base_url} if base_url else {"base_url_env": "BYOK_TEST_URL"}))


async def stream(target: Target, credentials: Credentials | None) -> tuple[list[Event], BackendError | None]:
    events: list[Event] = []
    request = ChatRequest((Message("user", "hi"),), make_params(max_tokens=16), credentials=credentials)
    try:
        async for event in make_backend(target).stream(request):
            events.append(event)
    except BackendError as exc:
        return events, exc
    return events, None


async def test_the_visitor_key_is_used_before_the_servers(server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOK_TEST_KEY", SERVER_KEY)
    _, error = await stream(keyed(server.base_url), Credentials({"BYOK_TEST_KEY": VISITOR_KEY}))
    assert error is None
    assert server.chat_requests("five")[-1].headers["authorization"] == f"Bearer {VISITOR_KEY}"
    _, error = await stream(keyed(server.base_url), None)
    assert error is None and server.chat_requests("five")[-1].headers["authorization"] == f"Bearer {SERVER_KEY}"


async def test_a_typed_url_never_gets_the_servers_key(server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOK_TEST_KEY", SERVER_KEY)
    before = len(server.received)
    _, error = await stream(keyed(), Credentials({"BYOK_TEST_URL": server.base_url}))
    assert error is not None and error.kind is ErrorKind.UNAVAILABLE
    assert "needs your own key too (BYOK_TEST_KEY)" in error.message
    assert len(server.received) == before  # nothing went anywhere


async def test_a_typed_model_name_is_sent(server: ScriptedServer) -> None:
    target = Target(id="yours", label="yours", backend="openai", model="(your model)", base_url=server.base_url,
                    model_env="BYOK_TEST_MODEL")
    _, error = await stream(target, Credentials({"BYOK_TEST_MODEL": "typed-model"}))
    assert error is None and server.chat_requests("typed-model")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_in_public_mode_a_typed_url_must_be_public(server: ScriptedServer, host: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    url = server.base_url.replace("127.0.0.1", host)
    before = len(server.received)
    credentials = Credentials({"BYOK_TEST_URL": url, "BYOK_TEST_KEY": VISITOR_KEY}, public_only=True)
    _, error = await stream(keyed(), credentials)
    assert error is not None and error.kind is ErrorKind.BAD_REQUEST
    assert f"{host} resolves to " in error.message and "must reach the public internet" in error.message
    assert len(server.received) == before
    monkeypatch.setenv("PLAYGROUND_ALLOW_PRIVATE_URLS", "1")  # a private deployment
    _, error = await stream(keyed(), credentials)
    assert error is None


async def test_a_redirect_is_not_followed() -> None:
    followed: list[bytes] = []

    async def elsewhere(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        followed.append(await reader.read(1000))
        writer.close()

    async def redirecting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (head := await reader.readuntil(b"\r\n\r\n")):
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:%d/v1/chat/completions\r\n"
                         b"content-length: 0\r\n\r\n" % other_port)
            await writer.drain()

    other = await asyncio.start_server(elsewhere, "127.0.0.1", 0)
    other_port = other.sockets[0].getsockname()[1]
    first = await asyncio.start_server(redirecting, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{first.sockets[0].getsockname()[1]}/v1"
        _, error = await stream(keyed(url), Credentials({"BYOK_TEST_KEY": VISITOR_KEY}))
        assert error is not None and error.kind is ErrorKind.BAD_REQUEST and "307 redirect" in error.message
        assert "not followed" in error.message and followed == []
    finally:
        first.close()
        other.close()


@pytest.fixture(scope="module")
def client(server: ScriptedServer) -> Iterator[Client]:
    yours = Target(id="yours/openai", label="Your endpoint", backend="openai", model="(your model)",
                   base_url_env="PLAYGROUND_USER_BASE_URL", model_env="PLAYGROUND_USER_MODEL",
                   api_key_env="PLAYGROUND_USER_API_KEY")
    settings = Settings(host="127.0.0.1", port=None, columns=1, default_targets=[], concurrency=8, catalog=None)
    demo = build_ui(Catalog(targets=[yours], defaults=["yours/openai"]), settings, Policy(public=False))
    demo.launch(**launch_options(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True))
    try:
        yield Client(demo.local_url, verbose=False)
    finally:
        demo.close()


def form(**values: str) -> list[str]:
    return [values.get(name, "") for name, _, _ in KEY_FIELDS]


def test_keys_set_in_one_session_serve_only_that_session(client: Client, server: ScriptedServer) -> None:
    other = Client(client.src, verbose=False)
    said = client.predict(*form(PLAYGROUND_USER_BASE_URL=server.base_url, PLAYGROUND_USER_MODEL="five",
                                PLAYGROUND_USER_API_KEY=VISITOR_KEY), api_name="/keys")
    assert VISITOR_KEY not in json.dumps(said) and "PLAYGROUND_USER_API_KEY" in json.dumps(said)
    mine = client.submit(*run_args("hi", ["yours/openai"], columns=1), api_name="/run")
    mine.result(timeout=60)
    assert server.chat_requests("five")[-1].headers["authorization"] == f"Bearer {VISITOR_KEY}"
    assert "✓" in json.dumps(mine.outputs()[-1], default=str, ensure_ascii=False)  # the column finished
    before = len(server.received)
    theirs = other.submit(*run_args("hi", ["yours/openai"], columns=1), api_name="/run")
    theirs.result(timeout=60)
    assert "set PLAYGROUND_USER_BASE_URL" in json.dumps(theirs.outputs()[-1], default=str)
    assert len(server.received) == before  # the other session's run went nowhere
    with urllib.request.urlopen(client.src.rstrip("/") + "/config", timeout=30) as response:
        assert VISITOR_KEY not in response.read().decode()
    assert VISITOR_KEY not in json.dumps(client.view_api(print_info=False, return_format="dict"), default=str)


def test_each_picker_entry_says_whose_key_it_will_use(monkeypatch: pytest.MonkeyPatch) -> None:
    from playground.ui_format import choice_label, key_availability

    target = keyed("https://example.test/v1")
    backend = make_backend(target)
    label = lambda creds, public: choice_label(target, key_availability(target, backend.availability(), creds, public))  # noqa: E731
    assert label(None, True) == "keyed — ✗ set a key under Your keys, or set BYOK_TEST_KEY"
    assert label(Credentials({"BYOK_TEST_KEY": VISITOR_KEY}), True) == "keyed — your key"
    monkeypatch.setenv("BYOK_TEST_KEY", SERVER_KEY)
    assert label(None, True) == "keyed — the Space's key (quota)"
    assert label(None, False) == "keyed — the server's key"
    assert label(Credentials({"BYOK_TEST_KEY": VISITOR_KEY}), True) == "keyed — your key"


def test_typed_keys_never_reach_a_deep_link_or_the_disk(client: Client, server: ScriptedServer) -> None:
    client.predict(*form(PLAYGROUND_USER_API_KEY=VISITOR_KEY), api_name="/keys")
    base = client.src.rstrip("/")
    for path in (f"/gradio_api/deep_link?session_hash={client.session_hash}", "/config?deep_link=abc"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + path, timeout=30)
        assert refused.value.code == 404
    config = json.loads(urllib.request.urlopen(base + "/config", timeout=30).read())
    assert config.get("run_history") is False


def test_only_typed_keys_are_remembered_for_redaction_and_a_closed_session_forgets_them() -> None:
    from playground import secrets

    typed = secrets.from_form({"PLAYGROUND_USER_BASE_URL": "http", "PLAYGROUND_USER_API_KEY": "sk-typed-0123456789"},
                              False, frozenset({"PLAYGROUND_USER_API_KEY"}))
    assert typed is not None and typed.secrets() == ["sk-typed-0123456789"]
    assert secrets.redact_log("HTTP 404 from http://x sk-typed-0123456789") == "HTTP 404 from http://x ***"
    assert "sk-typed-0123456789" in secrets.redact("sk-typed-0123456789")  # another visitor's text: not theirs
    assert secrets.redact("sk-typed-0123456789", typed.secrets()) == "***"  # their own
    secrets.forget("sk-typed-0123456789")
    assert "sk-typed-0123456789" in secrets.redact_log("sk-typed-0123456789")
    for n in range(secrets.MAX_REMEMBERED + 5):  # a flood pushes out the oldest, not an arbitrary one
        secrets.remember(f"flood-{n:06d}")
    assert "flood-000004" in secrets.redact_log("flood-000004") and secrets.redact_log(f"flood-{n:06d}") == "***"
    for n in range(secrets.MAX_REMEMBERED + 5):
        secrets.forget(f"flood-{n:06d}")


@pytest.mark.parametrize("address", ["::127.0.0.1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "::ffff:10.0.0.1",
                                     "169.254.169.254", "100.64.0.1", "fd00::1"])
def test_addresses_that_hide_a_private_one_are_refused(address: str) -> None:
    from playground.urls import refusal

    assert refusal("host", address) is not None
    assert refusal("host", "2001:4860:4860::8888") is None and refusal("host", "8.8.8.8") is None
