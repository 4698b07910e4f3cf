"""Two people at once, in two Chromium contexts on one app: each sees only their own prompts,
answers, results, downloads and keys, each key goes only with its own session's requests, and one
person's Stop leaves the other's run streaming. Keys are remembered in a browser only when asked."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import browser_flow as flow
from playground.catalog import Catalog, Target
from playground.settings import Settings
from playground.ui import build_ui
from tests.sse_server import Script, ScriptedServer
from tests.test_ui import launched

pytest.importorskip("playwright.sync_api", reason="pip install -r requirements-dev.txt (playwright)")
if not os.access(flow.CHROMIUM, os.X_OK):
    pytest.skip(f"no Chromium at {flow.CHROMIUM} (apt-get install chromium)", allow_module_level=True)

KEY_A, KEY_B = "sk-alice-CANARY-4417", "sk-bob-CANARY-9025"
KEY_BOX = "#key-playground-user-api-key input"
MODEL_BOX = "#key-playground-user-model textarea, #key-playground-user-model input"
URL_BOX = "#key-playground-user-base-url textarea, #key-playground-user-base-url input"


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    slow = Script(tokens=300, interval_s=0.03)  # about 9 s: long enough to stop one mid-answer on a slow machine
    with ScriptedServer({"slow": slow, "model-a": slow, "model-b": slow}) as srv:
        yield srv


@pytest.fixture(scope="module")
def app(server: ScriptedServer) -> Iterator[Any]:
    targets = [
        Target(id="slow", label="scripted slow", backend="openai", model="slow", base_url=server.base_url),
        Target(id="yours/openai", label="Your endpoint", backend="openai", model="(your model)",
               base_url_env="PLAYGROUND_USER_BASE_URL", model_env="PLAYGROUND_USER_MODEL",
               api_key_env="PLAYGROUND_USER_API_KEY"),
    ]
    settings = Settings(host="127.0.0.1", port=None, columns=2, default_targets=[], concurrency=8, catalog=None)
    with launched(build_ui(Catalog(targets=targets, defaults=["slow", "yours/openai"]), settings)) as demo:
        yield demo


@pytest.fixture(scope="module")
def app_url(app: Any) -> str:
    return app.local_url


def open_keys(page: Any) -> None:
    if not page.locator(KEY_BOX).is_visible():
        page.get_by_text("Your keys", exact=True).click()
        page.locator(KEY_BOX).wait_for(state="visible", timeout=30_000)


def type_keys(page: Any, base_url: str, model: str, key: str) -> None:
    open_keys(page)
    page.locator(URL_BOX).fill(base_url)
    page.locator(MODEL_BOX).fill(model)
    page.locator(KEY_BOX).fill(key)
    page.locator(KEY_BOX).blur()


def test_two_people_see_only_their_own_run_keys_and_downloads_and_one_stop_stops_one(
        app_url: str, server: ScriptedServer, page_at: Any, tmp_path: Path) -> None:
    alice, bob = page_at(), page_at()
    for page, model, key in ((alice, "model-a", KEY_A), (bob, "model-b", KEY_B)):
        flow.open_app(page, app_url)
        type_keys(page, server.base_url, model, key)
    flow.submit_prompt(alice, "alpha: tell me about rivers")
    flow.submit_prompt(bob, "beta: tell me about mountains")
    for page in (alice, bob):
        flow.wait_statuses(page, 2, ("streaming",), 60)
    alice.locator("#stop").click()
    flow.wait_statuses(alice, 2, ("stopped",), 30)
    assert not any("stopped" in s for s in flow.statuses(bob, 2)), "Alice's Stop reached Bob's run"
    flow.wait_statuses(bob, 2, ("done",), 60)

    [to_a] = server.chat_requests("model-a")
    [to_b] = server.chat_requests("model-b")
    assert to_a.headers["authorization"] == f"Bearer {KEY_A}" and to_b.headers["authorization"] == f"Bearer {KEY_B}"
    assert "alpha" in str(to_a.body) and "beta" in str(to_b.body)
    for request in server.chat_requests("slow"):
        assert "authorization" not in request.headers or KEY_A not in request.headers["authorization"] \
            and KEY_B not in request.headers["authorization"], "a typed key went to a catalog target"

    for page, mine, theirs, their_key in ((alice, "alpha", "beta", KEY_B), (bob, "beta", "alpha", KEY_A)):
        html = page.content()
        assert mine in html and theirs not in html and their_key not in html
        rows = flow.wait_table_rows(page, 2)
        assert len(rows) == 2, rows
        with page.expect_download() as download:
            page.locator("#download-csv").click()
        saved = tmp_path / f"{mine}.csv"
        download.value.save_as(saved)
        text = saved.read_text()
        assert theirs not in text and KEY_A not in text and KEY_B not in text
    assert [row for row in flow.table_rows(alice) if "stopped" in " ".join(row)], flow.table_rows(alice)
    assert not [row for row in flow.table_rows(bob) if "stopped" in " ".join(row)], flow.table_rows(bob)


def stored(page: Any) -> str:
    return page.evaluate("() => JSON.stringify(Object.assign({}, window.localStorage))")


def test_keys_stay_in_a_browser_only_when_asked_and_never_in_clear(app_url: str, page_at: Any) -> None:
    page = page_at()
    flow.open_app(page, app_url)
    type_keys(page, "https://example.test/v1", "m", KEY_A)
    page.reload()
    flow.open_app(page, app_url)
    open_keys(page)
    assert page.locator(KEY_BOX).input_value() == "", "a key was kept without being asked"
    assert KEY_A not in stored(page)

    type_keys(page, "https://example.test/v1", "m", KEY_A)
    page.locator("#remember-keys input").check()
    page.wait_for_function("() => Object.keys(window.localStorage).some((k) => k.includes('phi-playground-keys'))",
                           timeout=30_000)
    assert KEY_A not in stored(page), "the remembered key is in local storage in clear"
    page.reload()
    flow.open_app(page, app_url)
    open_keys(page)
    page.wait_for_function(f"() => document.querySelector('{KEY_BOX}').value === '{KEY_A}'", timeout=30_000)
    assert page.locator("#remember-keys input").is_checked()

    other = page_at()  # another browser remembers nothing of this one
    flow.open_app(other, app_url)
    open_keys(other)
    assert other.locator(KEY_BOX).input_value() == ""

    with_key = stored(page)
    page.locator("#remember-keys input").uncheck()
    page.wait_for_function("(before) => JSON.stringify(Object.assign({}, window.localStorage)) !== before",
                           arg=with_key, timeout=30_000)
    page.reload()
    flow.open_app(page, app_url)
    open_keys(page)
    assert page.locator(KEY_BOX).input_value() == "", "unticking did not forget the key"


def run_and_wait(page: Any, server: ScriptedServer, prompt: str) -> Any:
    """Submit; wait (bounded) for the run's request to reach the server and its column to end. A run
    takes one submit at a time: an Enter pressed while the last run's event is still closing is
    dropped (its statuses say "done" a moment before), so one that sent nothing is pressed again."""
    before = len(server.chat_requests("slow"))
    deadline = time.monotonic() + 60
    while len(server.chat_requests("slow")) == before:
        assert time.monotonic() < deadline, (f"no request for {prompt!r}", flow.statuses(page, 2))
        flow.submit_prompt(page, prompt)
        pressed = time.monotonic()
        while len(server.chat_requests("slow")) == before and time.monotonic() - pressed < 2:
            page.wait_for_timeout(50)
    [request] = server.chat_requests("slow")[before:]
    return request


def wait_first_status(page: Any, has: str, lacks: str = "\u0000") -> None:
    """Wait until column 0's status says ``has`` and not ``lacks`` (its run's own status, not the last one's)."""
    page.wait_for_function("([has, lacks]) => { const t = document.querySelector('#col-0-status').innerText;"
                           " return t.includes(has) && !t.includes(lacks); }",
                           arg=[has, lacks], timeout=60_000, polling=100)


def test_a_page_whose_session_the_server_dropped_is_told_its_earlier_turns_are_gone(
        app: Any, server: ScriptedServer, page_at: Any) -> None:
    """Past PLAYGROUND_SESSIONS the least recently active session's state goes: its page still shows
    earlier turns that the models will no longer get, and must say so, once."""
    page = page_at()
    flow.open_app(page, app.local_url)
    flow.set_parameter(page, "max-tokens", 4)
    said = "earlier turns are no longer on the server"
    first = run_and_wait(page, server, "first: tell me about lakes")
    wait_first_status(page, "done")
    assert "lakes" in str(first.body)

    app.server_app.state_holder.session_data.clear()  # what the cap does to an idle session
    second = run_and_wait(page, server, "second: and about seas")
    assert "first" not in str(second.body)  # the turn the server no longer had
    wait_first_status(page, said)  # the column says so (and the run goes on)
    third = run_and_wait(page, server, "third: and rivers")  # the page's token was taken again: said once
    assert "second" in str(third.body), "the turn after the notice is the conversation again"
    wait_first_status(page, "done", lacks=said)
