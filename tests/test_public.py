"""Public mode: what a Space open to anyone offers, the run quota, and both through the real UI."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
from gradio_client import Client

from playground import public
from playground.catalog import Catalog, Target
from playground.public import Policy, Quota, Rate, parse_rate
from playground.settings import Settings
from playground.ui import build_ui, launch_options
from tests.sse_server import Script, ScriptedServer
from tests.test_ui import free_port, launched, run_args

QUICK = "quick"
HUB = Target(id="hub/phi", label="Phi on the hub", backend="transformers", model="microsoft/Phi-3.5-mini-instruct",
             source="hub", download_gb=7.6)
REMOTE_CODE = Target(id="hub/vision", label="vision", backend="transformers", model="microsoft/Phi-3.5-vision-instruct",
                     source="hub", vision=True, trust_remote_code=True)
BUNDLED = Target(id="smollm2-onnx", label="bundled", backend="onnx", model="smollm2", source="bundled")


def http(base_url: str) -> Target:
    return Target(id=QUICK, label="scripted quick", backend="openai", model=QUICK, base_url=base_url)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, (False, None)),
    ({"SPACE_ID": "me/space"}, (True, Rate(6, 60))),
    ({"SPACE_ID": "me/space", "PLAYGROUND_PUBLIC": "0"}, (False, None)),
    ({"PLAYGROUND_PUBLIC": "1", "PLAYGROUND_RATE": "100/hour"}, (True, Rate(100, 3600))),
    ({"PLAYGROUND_PUBLIC": "1", "PLAYGROUND_RATE": "off"}, (True, None)),
])
def test_public_mode_is_on_for_a_space_unless_told(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                   expected: tuple[bool, Rate | None]) -> None:
    for name in ("SPACE_ID", "PLAYGROUND_PUBLIC", "PLAYGROUND_RATE", "PLAYGROUND_PUBLIC_TARGETS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    policy = public.from_env()
    assert (policy.public, policy.rate) == expected


@pytest.mark.parametrize("text", ["six/min", "6/fortnight", "0/min", "6", "6/.min", "2/0min"])
def test_a_bad_rate_is_refused_by_name(text: str) -> None:
    with pytest.raises(public.PolicyError, match="PLAYGROUND_RATE"):
        parse_rate(text)


def test_looking_at_the_quota_records_nothing() -> None:
    quota = Quota(Rate(2, 60))
    assert quota.status([f"session:{n}" for n in range(100)]) == "2 of 2 runs left this minute"
    assert quota._runs == {}


def test_only_targets_that_download_nothing_are_offered() -> None:
    policy = Policy(public=True)
    assert policy.refusal(http("http://127.0.0.1:9/v1")) is None
    assert policy.refusal(BUNDLED) is None
    assert "downloads 7.6 GB into the server" in (policy.refusal(HUB) or "")
    assert "trust_remote_code" in (policy.refusal(REMOTE_CODE) or "")
    owner = Policy(public=True, targets=frozenset({"hub/phi", "hub/vision"}))
    assert owner.refusal(HUB) is None  # the owner chose it
    assert owner.refusal(REMOTE_CODE) is not None  # never, whoever asks
    assert owner.refusal(BUNDLED) is not None  # exactly the listed ones
    assert Policy(public=False).refusal(REMOTE_CODE) is None


def test_a_target_fills_at_most_two_columns_in_public_mode() -> None:
    assert public.same_target_refusal(Policy(public=True), ["a", "a", "b"]) is None
    assert public.same_target_refusal(Policy(public=True), ["a", "a", "a"]) == \
        "a is in 3 columns; on a public Space a target may fill at most 2"
    assert public.same_target_refusal(Policy(public=False), ["a"] * 6) is None


def test_the_quota_refuses_the_seventh_run_and_says_when_to_retry() -> None:
    now = [1000.0]
    quota = Quota(Rate(6, 60), clock=lambda: now[0])
    for n in range(6):
        assert quota.status(["session:a", "address:x"]) == f"{6 - n} of 6 runs left this minute"
        assert quota.take(["session:a", "address:x"]) is None
        now[0] += 1
    assert quota.take(["session:a", "address:x"]) == pytest.approx(54)  # the first run leaves the window at 1060
    assert "The next run is allowed in 54 s." in quota.refusal(54.0)
    assert quota.take(["session:b", "address:x"]) is not None  # a new session from the same address
    assert quota.take(["session:c", "address:y"]) is None
    now[0] = 1060.5
    assert quota.take(["session:a", "address:x"]) is None


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer({QUICK: Script(tokens=3)}) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ScriptedServer) -> Iterator[Client]:
    catalog = Catalog(targets=[http(server.base_url), HUB, REMOTE_CODE], defaults=[QUICK])
    settings = Settings(host="127.0.0.1", port=None, columns=1, default_targets=[], concurrency=8, catalog=None)
    with launched(build_ui(catalog, settings, Policy(public=True, rate=Rate(3, 60)))) as demo:
        yield Client(demo.local_url, verbose=False)


def test_the_page_says_public_mode_and_offers_no_download(client: Client) -> None:
    with urllib.request.urlopen(client.src.rstrip("/") + "/config", timeout=30) as response:
        config = json.loads(response.read())
    text = json.dumps(config)
    assert "Public mode" in text
    assert "scripted quick" in text and "hub/phi" not in text and "hub/vision" not in text


def test_through_the_api_refusals_name_the_reason_and_the_quota_bites_last(client: Client) -> None:
    with pytest.raises(Exception, match="the arena's pool is the host's setting"):
        client.predict("lobby", [QUICK], api_name="/arena_pool")  # not a visitor's to change
    with pytest.raises(Exception, match="hub/phi is not offered on this public Space: it downloads 7.6 GB"):
        client.submit(*run_args("hi", ["hub/phi"], columns=1), api_name="/run").result(timeout=60)
    with pytest.raises(Exception, match="quick is in 3 columns"):
        client.submit(*run_args("hi", [QUICK] * 3, columns=3), api_name="/run").result(timeout=60)
    for _ in range(3):  # the refusals above cost nothing
        client.submit(*run_args("hi", [QUICK], columns=1), api_name="/run").result(timeout=60)
    with pytest.raises(Exception, match=r"Run limit reached: 3 runs a minute per visitor .* allowed in \d+ s"):
        client.submit(*run_args("hi", [QUICK], columns=1), api_name="/run").result(timeout=60)


def test_a_benchmark_costs_one_run_per_repeat_and_warm_up() -> None:
    import math

    now = [1000.0]
    quota = Quota(Rate(6, 60), clock=lambda: now[0])
    assert quota.take(["s"], cost=4) is None and quota.left(["s"]) == 2
    assert quota.take(["s"], cost=3) == pytest.approx(60.0)  # the first of the four leaves the window then
    assert quota.take(["s"], cost=7) == math.inf  # more than the limit itself: never allowed
    now[0] += 61
    assert quota.take(["s"], cost=6) is None and quota.left(["s"]) == 0


def _request(forwarded: str | None, host: str = "10.0.0.9") -> object:
    from types import SimpleNamespace
    headers = {"x-forwarded-for": forwarded} if forwarded is not None else {}
    return SimpleNamespace(headers=headers, client=SimpleNamespace(host=host))


def test_the_quota_address_is_the_entry_the_proxy_appended() -> None:
    """Entries left of the right-most one are whatever the client sent (README, Security)."""
    from playground.ui import _address

    behind = Policy(public=True, trust_forwarded_for=True)
    assert _address(_request("6.6.6.6, 1.2.3.4, 203.0.113.7"), behind) == "203.0.113.7"
    assert _address(_request(""), behind) == "10.0.0.9"
    assert _address(_request("6.6.6.6, 203.0.113.7"), Policy(public=True)) == "10.0.0.9"  # not on a Space
    assert _address(None, behind) == "unknown"


def test_the_readme_says_which_forwarded_entry_counts_and_that_a_nat_shares_it() -> None:
    from pathlib import Path

    text = " ".join((Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8").split())
    assert "first `X-Forwarded-For` entry" not in text
    assert "right-most `X-Forwarded-For` entry" in text
    assert "NAT" in text and "shares one address quota" in text


def _page_event(url: str, session_hash: str, fn_index: int) -> list:
    """Run one of the page's own events (no API name, so gradio_client will not) the way the page does."""
    import httpx

    base = url.rstrip("/") + "/gradio_api"
    joined = httpx.post(f"{base}/queue/join", json={"data": [], "fn_index": fn_index, "session_hash": session_hash,
                                                    "event_data": None, "trigger_id": None}, timeout=30)
    joined.raise_for_status()
    with httpx.stream("GET", f"{base}/queue/data", params={"session_hash": session_hash}, timeout=30) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    assert message.get("success"), message
                    return message["output"]["data"]
    raise AssertionError("the event never completed")


def test_the_page_shows_the_quota_before_any_run_and_counts_it_down(server: ScriptedServer) -> None:
    catalog = Catalog(targets=[http(server.base_url)], defaults=[QUICK])
    settings = Settings(host="127.0.0.1", port=None, columns=1, default_targets=[], concurrency=8, catalog=None)
    demo = build_ui(catalog, settings, Policy(public=True, rate=Rate(6, 60)))
    demo.launch(**launch_options(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True))
    try:
        [on_load] = [index for index, fn in demo.fns.items() if getattr(fn.fn, "__name__", "") == "quota_status"
                     and any(event == "load" for _, event in fn.targets)]
        line = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "quota")
        assert demo.fns[on_load].outputs == [line] and line.visible
        client = Client(demo.local_url, verbose=False)
        assert _page_event(demo.local_url, client.session_hash, on_load) == ["6 of 6 runs left this minute"]
        client.submit(*run_args("hi", [QUICK], columns=1), api_name="/run").result(timeout=60)
        assert _page_event(demo.local_url, client.session_hash, on_load) == ["5 of 6 runs left this minute"]
        roots = set()  # the runs whose end the page follows with a fresh quota line
        for fn in demo.fns.values():
            if line in fn.outputs and fn.trigger_after is not None:  # the page's follow-up sets it with the rest
                first = fn
                while first.trigger_after is not None:
                    first = demo.fns[first.trigger_after]
                roots.add(first.fn.__name__)
        assert {"run_from_page", "run_from_api", "bench_from_api"} <= roots
    finally:
        demo.close()
