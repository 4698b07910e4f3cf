"""UI behaviour that needs precise control: multi-turn history and Stop, on a scripted server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from gradio_client import Client

from playground.catalog import Catalog, Target
from playground.settings import MAX_COLUMNS, Settings
from playground.ui import build_ui
from tests.sse_server import Script, ScriptedServer
from tests.test_ui import free_port, run_args, scripted_app, text_of


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    scripts = {"quick": Script(tokens=4), "slow": Script(tokens=400, interval_s=0.02)}
    with ScriptedServer(scripts) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ScriptedServer) -> Iterator[Client]:
    with scripted_app(server.base_url, ("quick", "slow"), columns=2) as demo:
        yield Client(demo.local_url, verbose=False)


def test_each_column_keeps_its_own_conversation(client: Client, server: ScriptedServer) -> None:
    client.submit(*run_args("first question", ["quick"], columns=1), api_name="/run").result(timeout=60)
    job = client.submit(*run_args("second question", ["quick"], columns=1), api_name="/run")
    job.result(timeout=60)
    chat = job.outputs()[-1][0]
    assert [text_of(m) for m in chat][::2] == ["first question", "second question"]
    sent = server.chat_requests("quick")[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"] == "first question" and sent[1]["content"].startswith("t0")
    client.predict(api_name="/clear")


def test_stop_stops_every_column_and_keeps_partial_text(client: Client) -> None:
    job = client.submit(*run_args("long answer please", ["slow", "slow"], max_tokens=400), api_name="/run")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until both columns show streamed text
        outs = job.outputs()
        if outs and all(isinstance(c, list) and len(c) == 2 and "t1" in text_of(c[1]) for c in outs[-1][:2]):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the slow stream never started")
    pressed = time.monotonic()
    client.predict(api_name="/stop")
    job.result(timeout=10)
    took = time.monotonic() - pressed
    final = job.outputs()[-1]
    statuses = final[MAX_COLUMNS:MAX_COLUMNS + 2]
    assert all("stopped" in s for s in statuses), statuses
    assert took < 2.0, f"stop took {took:.2f} s"
    for chat in final[:2]:
        answer = text_of(chat[-1])
        assert "t1" in answer and "t399" not in answer, "partial text kept, stream not completed"
    rows = final[2 * MAX_COLUMNS]["data"]
    assert [row[-1] for row in rows] == ["stopped", "stopped"]


def test_clear_during_a_run_stops_it_and_nothing_of_it_comes_back(client: Client, server: ScriptedServer) -> None:
    """Clear while an answer streams: the run stops, sends no frame after the clear, and its turn
    does not reach the session's history (the next prompt goes alone)."""
    client.predict(api_name="/clear")  # an empty conversation to start from
    job = client.submit(*run_args("a long answer to clear", ["slow"], max_tokens=400, columns=1), api_name="/run")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any("t2" in str(o[0]) for o in job.outputs()):
        time.sleep(0.05)  # polling the client's received frames, bounded: the answer is streaming
    pressed = time.monotonic()
    client.predict(api_name="/clear")
    frames_at_clear = len(job.outputs())
    job.result(timeout=10)
    assert time.monotonic() - pressed < 2.0, "the cleared run went on"
    assert len(job.outputs()) <= frames_at_clear + 1, "frames kept coming after the clear"  # one may be in flight
    assert len(server.chat_requests("slow")[-1].body["messages"]) == 1
    client.submit(*run_args("a fresh start", ["quick"], columns=1), api_name="/run").result(timeout=60)
    sent = server.chat_requests("quick")[-1].body["messages"]
    assert [m["content"] for m in sent] == ["a fresh start"], "the cleared run's turn came back"
    client.predict(api_name="/clear")


def test_an_image_reaches_the_vision_target_only(tmp_path, server: ScriptedServer) -> None:
    from gradio_client import handle_file
    from PIL import Image

    targets = [
        Target(id="eyes", label="scripted vision", backend="openai", model="quick", base_url=server.base_url,
               vision=True),
        Target(id="blind", label="scripted text", backend="openai", model="quick", base_url=server.base_url),
    ]
    settings = Settings(host="127.0.0.1", port=None, columns=2, default_targets=[], concurrency=8, catalog=None)
    demo = build_ui(Catalog(targets=targets, defaults=["eyes", "blind"]), settings)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
    try:
        path = tmp_path / "red.png"
        Image.new("RGB", (64, 48), (220, 20, 20)).save(path)
        client = Client(demo.local_url, verbose=False)
        before = len(server.chat_requests("quick"))
        args = run_args("What colour?", ["eyes", "blind"])
        args[0] = {"text": "What colour?", "files": [handle_file(str(path))]}
        job = client.submit(*args, api_name="/run")
        job.result(timeout=60)
        final = job.outputs()[-1]
        bodies = [r.body for r in server.chat_requests("quick")[before:]]
        with_image = [b for b in bodies if isinstance(b["messages"][-1]["content"], list)]
        assert len(bodies) == 2 and len(with_image) == 1
        assert any(p["type"] == "image_url" for p in with_image[0]["messages"][-1]["content"])
        statuses = final[MAX_COLUMNS:MAX_COLUMNS + 2]
        assert "text only: image not sent" in statuses[1] and "text only" not in statuses[0]
        assert "red.png" in text_of(final[0][0])

        bad = tmp_path / "notes.png"
        bad.write_text("not a picture")
        args[0] = {"text": "What colour?", "files": [handle_file(str(bad))]}
        with pytest.raises(Exception, match="notes.png"):
            client.submit(*args, api_name="/run").result(timeout=60)
    finally:
        demo.close()


def test_only_gradio_uploads_are_read(tmp_path) -> None:
    import gradio as gr

    from playground.ui import _uploaded_only

    with pytest.raises(gr.Error, match="uploading or pasting"):
        _uploaded_only({"text": "hi", "files": [{"path": "/etc/passwd"}]})
    assert _uploaded_only({"text": "hi", "files": []}) == {"text": "hi", "files": []}


def test_seed_blank_means_random_and_junk_is_refused(client: Client, server: ScriptedServer) -> None:
    args = run_args("seeded?", ["quick"], columns=1)
    args[5] = ""
    client.submit(*args, api_name="/run").result(timeout=60)
    assert "seed" not in server.chat_requests("quick")[-1].body
    args[5] = "42"
    client.submit(*args, api_name="/run").result(timeout=60)
    assert server.chat_requests("quick")[-1].body["seed"] == 42
    args[5] = "forty"
    with pytest.raises(Exception, match="seed: must be a whole number"):
        client.submit(*args, api_name="/run").result(timeout=60)
    client.predict(api_name="/clear")


def test_one_column_can_be_stopped_while_the_other_finishes(client: Client) -> None:
    job = client.submit(*run_args("two answers please", ["slow", "quick"], max_tokens=400), api_name="/run")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any("▶" in str(o) for o in job.outputs()):
        time.sleep(0.05)  # polling the client's received frames, bounded: the first column is streaming
    client.predict(0, api_name="/stop_column")
    final = job.result(timeout=60)
    statuses = final[MAX_COLUMNS:2 * MAX_COLUMNS]
    assert "■" in statuses[0] and "✓" in statuses[1], statuses[:2]
    slow_answer = text_of(final[0][-1])
    assert 0 < len(slow_answer) < len(" ".join(f"t{i}" for i in range(400))), "the stopped column keeps its partial text"
    for wrong in (9, 1.5, -1):  # 1.5 is no column (it was rounded to 2, and stopped that one)
        with pytest.raises(Exception, match="column: must be a whole number from 0 to 5"):
            client.predict(wrong, api_name="/stop_column")


def test_benchmark_mode_through_the_api_repeats_each_column_and_reports_statistics(
        client: Client, server: ScriptedServer) -> None:
    import json

    before = len(server.chat_requests("quick"))
    args = run_args("benchmark me", ["quick", "quick"], max_tokens=4, columns=2)
    job = client.submit(*args, 3, 1, "auto", "ttft:5000", api_name="/bench")  # Repeat, Warm-up, Fair, Goodput
    job.result(timeout=120)
    assert len(server.chat_requests("quick")) - before == 2 * (1 + 3)  # a warm-up and three runs a column
    phases = {s.split("**")[1] for frame in job.outputs() for s in frame[MAX_COLUMNS:MAX_COLUMNS + 2] if "**" in s}
    assert "warm-up 1 of 1" in phases and any(p.startswith("run ") and p.endswith(" of 3") for p in phases)
    assert all(s.startswith("**run 3 of 3** · ✓") for s in job.outputs()[-1][MAX_COLUMNS:MAX_COLUMNS + 2])
    final = job.outputs()[-1]
    stats_table = final[-1]
    rows = [dict(zip(stats_table["headers"], row)) for row in stats_table["data"]]
    ttft_rows = [r for r in rows if r["metric"] == "TTFT (ms)"]
    assert [r["target"] for r in ttft_rows] == ["scripted quick (column 1)", "scripted quick (column 2)"]
    assert ttft_rows[0]["n"] == 3  # the same target twice: two rows, told apart by their column
    json_update = final[2 * MAX_COLUMNS + 2]
    json_path = json_update["value"] if isinstance(json_update, dict) else json_update
    assert json_path.endswith("phi-playground-bench.json")
    with open(json_path, encoding="utf-8") as f:
        document = json.load(f)
    assert document["kind"] == "benchmark" and document["repeat"] == 3 and document["warmup"] == 1
    assert document["fair_mode"] is False  # no local target: nothing to take turns for
    entry = document["targets"][0]
    assert [r["warmup"] for r in entry["runs"]] == [True, False, False, False] and entry["goodput"] == 1.0
    assert round(entry["statistics"]["ttft_s"]["p50"] * 1000, 1) == ttft_rows[0]["p50"]  # the table is the export
    assert document["environment"]["targets"][0]["endpoint"] and document["environment"]["cpu"]


def test_benchmark_settings_out_of_range_are_refused_by_name(client: Client) -> None:
    args = run_args("hi", ["quick"], columns=1)
    for extra, message in (((0, 0, "auto", ""), "Repeat: must be a whole number from 1 to 20"),
                           ((2, 9, "auto", ""), "Warm-up runs: must be a whole number from 0 to 3"),
                           ((2, 0, "sometimes", ""), "Fair mode: must be one of auto, on, off"),
                           ((2, 0, "auto", "ttft:soon"), "goodput: ttft needs a number")):
        with pytest.raises(Exception, match=message):
            client.submit(*args, *extra, api_name="/bench").result(timeout=30)
