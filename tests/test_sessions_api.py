"""Two gradio_client sessions at once on one app: each sees only its own history, results and
downloads, and one session's /stop leaves the other streaming to its end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from gradio_client import Client

from playground.settings import MAX_COLUMNS
from tests.sse_server import Script, ScriptedServer
from tests.test_ui import run_args, scripted_app, text_of

TOKENS = 150  # 3 s at 20 ms a token: long enough to stop one mid-answer on a slow machine


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer({"slow": Script(tokens=TOKENS, interval_s=0.02), "quick": Script(tokens=3)}) as srv:
        yield srv


@pytest.fixture(scope="module")
def url(server: ScriptedServer) -> Iterator[str]:
    with scripted_app(server.base_url, ("slow", "quick"), columns=1) as demo:
        yield demo.local_url


def wait_streaming(job: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        outs = job.outputs()
        if outs and isinstance(outs[-1][0], list) and len(outs[-1][0]) == 2 and "t1" in text_of(outs[-1][0][1]):
            return
        time.sleep(0.05)
    pytest.fail("the slow stream never started")


def downloaded(url: str, value: dict[str, Any]) -> str:
    """The file a download button offers, fetched as the page would."""
    import httpx

    response = httpx.get(f"{url.rstrip('/')}/gradio_api/file={value['value']}", timeout=30)
    response.raise_for_status()
    return response.text


def test_two_sessions_see_only_their_own_runs_and_one_stop_stops_one(url: str, server: ScriptedServer) -> None:
    alice, bob = Client(url, verbose=False), Client(url, verbose=False)
    assert alice.session_hash != bob.session_hash
    jobs = {name: client.submit(*run_args(f"{name}: tell me about rivers", ["slow"], max_tokens=TOKENS, columns=1),
                                api_name="/run") for name, client in (("alpha", alice), ("beta", bob))}
    for job in jobs.values():
        wait_streaming(job)
    alice.predict(api_name="/stop")
    stopped, finished = jobs["alpha"].result(timeout=30), jobs["beta"].result(timeout=60)
    assert "stopped" in stopped[MAX_COLUMNS], stopped[MAX_COLUMNS]
    assert "stopped" not in finished[MAX_COLUMNS] and "✓" in finished[MAX_COLUMNS], finished[MAX_COLUMNS]
    whole = " ".join(f"t{i}" for i in range(TOKENS))
    assert text_of(finished[0][-1]).strip() == whole, "Bob's answer was cut"
    assert len(text_of(stopped[0][-1])) < len(whole)
    assert [row[-1] for row in stopped[2 * MAX_COLUMNS]["data"]] == ["stopped"]
    assert [row[-1] for row in finished[2 * MAX_COLUMNS]["data"]] != ["stopped"]

    for client, mine, theirs, result in ((alice, "alpha", "beta", stopped), (bob, "beta", "alpha", finished)):
        csv_button, json_button = result[2 * MAX_COLUMNS + 1:2 * MAX_COLUMNS + 3]
        assert csv_button["value"].endswith(".csv") and json_button["value"].endswith(".json")
        assert csv_button["value"] != (finished if client is alice else stopped)[2 * MAX_COLUMNS + 1]["value"]
        for button in (csv_button, json_button):
            text = downloaded(url, button)
            assert mine in text and theirs not in text
        # a second turn: the session's own history goes with it, never the other's
        second = client.submit(*run_args(f"{mine}: and then?", ["quick"], columns=1), api_name="/run").result(timeout=60)
        sent = server.chat_requests("quick")[-1].body["messages"]
        assert [m["content"] for m in sent if m["role"] == "user"] == [f"{mine}: tell me about rivers", f"{mine}: and then?"]
        assert theirs not in str(sent) and theirs not in str(second[0])
