"""The UI through gradio_client, on the two bundled targets (real models)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import gradio as gr
import pytest
from gradio_client import Client

from playground.settings import MAX_COLUMNS, Settings
from playground.ui import PROGRESS_POLL_S, QUEUE_POLL_S, build_ui, launch_options


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def scripted_app(base_url: str, names: tuple[str, ...], columns: int) -> Iterator[gr.Blocks]:
    """The app launched on loopback over scripted OpenAI-compatible targets (one per script name,
    the first ``columns`` of them picked); always closed."""
    from playground.catalog import Catalog, Target

    targets = [Target(id=name, label=f"scripted {name}", backend="openai", model=name, base_url=base_url)
               for name in names]
    settings = Settings(host="127.0.0.1", port=None, columns=columns, default_targets=[], concurrency=8, catalog=None)
    with launched(build_ui(Catalog(targets=targets, defaults=list(names[:columns])), settings)) as demo:
        yield demo


@contextmanager
def launched(demo: gr.Blocks) -> Iterator[gr.Blocks]:
    """``demo`` launched as the app launches it, on a free loopback port; always closed."""
    demo.launch(**launch_options(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(),
                                 quiet=True))
    try:
        yield demo
    finally:
        demo.close()


@pytest.fixture(scope="module")
def demo() -> Iterator[gr.Blocks]:
    settings = Settings(host="127.0.0.1", port=None, columns=2, default_targets=[], concurrency=8, catalog=None)
    with launched(build_ui(settings=settings)) as demo:
        yield demo


@pytest.fixture(scope="module")
def client(demo: gr.Blocks) -> Client:
    return Client(demo.local_url, verbose=False)


def test_the_app_keeps_a_bounded_number_of_sessions_state(demo: gr.Blocks, monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """Gradio keeps up to 10,000 sessions' state (README: ~0.5 MB each after 10 runs)."""
    assert demo.server_app.state_holder.capacity == 500  # launched with launch_options, the default
    monkeypatch.setenv("PLAYGROUND_SESSIONS", "40")
    assert launch_options()["state_session_capacity"] == 40


def test_the_launched_queue_is_polled_every_10_ms_not_every_1(demo: gr.Blocks) -> None:
    """Gradio's default 1 ms poll costs an idle app about 5 % of a CPU (README); a Gradio that
    renamed the attribute would bring it back silently."""
    queue = demo._queue
    assert queue.sleep_when_free == QUEUE_POLL_S == 0.01
    assert queue.progress_update_sleep_when_free == PROGRESS_POLL_S


def test_the_queue_does_not_summarise_its_events_after_each_one(client: Client, demo: gr.Blocks) -> None:
    """Gradio's queue would build a pandas summary of up to 10,000 past events after every event
    (for a monitoring dashboard the app does not enable); a Gradio that renamed the knob would bring
    that back silently."""
    queue = demo._queue
    job = client.submit(*run_args("hi", ["no-such-target"], columns=1), api_name="/run")  # an event, refused
    with pytest.raises(Exception, match="no-such-target"):
        job.result(timeout=60)
    assert queue.events_recorded >= 1
    records = [{"time": 0.0, "status": "success", "process_time": 0.1, "function": "run", "session_hash": "x"}] * 3
    assert queue.compute_analytics_summary(records) == {"functions": {}}  # what it would do next: nothing


def test_gradio_monitoring_is_off(demo: gr.Blocks) -> None:
    """Gradio's default (enable_monitoring None) serves every function's timings to anyone."""
    import httpx

    for path in ("monitoring/summary", "gradio_api/monitoring/summary"):
        answer = httpx.get(demo.local_url + path, timeout=10)
        assert answer.status_code in (403, 404), (path, answer.status_code, answer.text[:200])


def test_an_upload_over_50_mb_is_refused_before_it_is_stored(demo: gr.Blocks) -> None:
    import httpx

    from playground.images import MAX_FILE_BYTES

    assert launch_options()["max_file_size"] == MAX_FILE_BYTES == 50 * 1024 * 1024
    assert demo.max_file_size == MAX_FILE_BYTES  # what the launched app enforces
    url = demo.local_url.rstrip("/") + "/gradio_api/upload"
    over = httpx.post(url, files={"files": ("big.png", b"\0" * (MAX_FILE_BYTES + 1))}, timeout=60)
    assert over.status_code == 413 and "maximum allowed size" in over.text
    small = httpx.post(url, files={"files": ("small.png", b"\0" * 1024)}, timeout=60)
    assert small.status_code == 200, small.text


def run_args(prompt: str, targets: list[str], max_tokens: int = 24, columns: int = 2) -> list:
    padded = targets + [None] * (MAX_COLUMNS - len(targets))
    return [{"text": prompt, "files": []}, "", 0.0, 1.0, max_tokens, "", columns, *padded]


def text_of(message: dict) -> str:
    content = message["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content)
    return content


def test_run_streams_two_targets_and_reports_metrics(client: Client) -> None:
    job = client.submit(*run_args("Say hello in five words.", ["smollm2-onnx", "smollm2-transformers"]),
                        api_name="/run")
    job.result(timeout=600)
    outputs = job.outputs()
    assert len(outputs) > 2, "the run should stream several frames, not one"
    chats, statuses = outputs[-1][:MAX_COLUMNS], outputs[-1][MAX_COLUMNS:2 * MAX_COLUMNS]
    table = outputs[-1][2 * MAX_COLUMNS]
    for i in range(2):
        assert text_of(chats[i][0]) == "Say hello in five words."
        assert text_of(chats[i][1]).strip(), f"column {i} has no answer"
        assert "done" in statuses[i] and "TTFT" in statuses[i] and "tok/s" in statuses[i]
    rows = table["data"]
    assert [row[1] for row in rows] == ["onnx", "transformers"]
    assert all(row[-1] == "done" for row in rows)
    assert all(isinstance(row[2], float) and row[2] > 0 for row in rows), "TTFT missing"
    # some intermediate frame showed a partial answer while the other column was still going
    partial = [o for o in outputs[:-1] if any(isinstance(c, list) and len(c) == 2 for c in o[:2])]
    assert partial, "no streamed frame carried text before the end"


def test_downloads_hold_the_run_without_keys(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    job = client.submit(*run_args("Name a colour.", ["smollm2-onnx"], max_tokens=8, columns=1), api_name="/run")
    job.result(timeout=600)
    final = job.outputs()[-1]
    csv_update, json_update = final[2 * MAX_COLUMNS + 1], final[2 * MAX_COLUMNS + 2]
    csv_path = csv_update["value"] if isinstance(csv_update, dict) else csv_update
    json_path = json_update["value"] if isinstance(json_update, dict) else json_update
    import json
    from pathlib import Path

    document = json.loads(Path(json_path).read_text())
    assert document["prompt"] == "Name a colour."
    assert document["results"][0]["id"] == "smollm2-onnx"
    assert document["results"][0]["status"] == "ok"
    from playground import records

    back = records.parse_export(Path(json_path).read_text())  # what Import takes: it replays
    assert len(back["timelines"][0]["events"]) >= 1
    header = Path(csv_path).read_text().splitlines()[0]
    for name in ("id", "backend", "ttft_s", "decode_tokens_per_s", "output_tokens", "tokens_source", "text", "prompt",
                 "env_playground", "env_python", "env_cpu", "model_file", "model_fingerprint"):
        assert name in header
    # the environment that produced the numbers travels with them
    env = document["environment"]
    assert env["python"] and env["cores"] and env["libraries"]["gradio"]
    [facts] = env["targets"]
    assert facts["id"] == "smollm2-onnx" and len(facts["fingerprint"]) == 16
    assert "model.onnx.data" in facts["file"] and facts["quantisation"] == "int4"  # the int4 files it loaded
    for name in ("lib_gradio", "lib_onnxruntime-genai", "model_built_from", "temperature"):
        assert name in header


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "message"),
    [("   ", 24, "prompt is empty"), ("hi", 0, "max_tokens"), ("hi", 99999, "max_tokens")],
)
def test_bad_input_is_refused_with_a_clear_message(client: Client, prompt: str, max_tokens: float, message: str,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    job = client.submit(*run_args(prompt, ["smollm2-onnx"], max_tokens=max_tokens, columns=1), api_name="/run")
    with pytest.raises(Exception, match=message):
        job.result(timeout=60)
    assert "Traceback" not in capfd.readouterr().err  # a refusal, not a failure: nothing for the app's log


@pytest.mark.parametrize("columns", [7, 0, -1, 2.5])
def test_a_bad_column_count_is_refused_with_its_value(client: Client, columns: float) -> None:
    job = client.submit(*run_args("hi", ["smollm2-onnx"], columns=columns), api_name="/run")  # type: ignore[arg-type]
    with pytest.raises(Exception, match=r"columns: must be a whole number from 1 to 6 \(got "):
        job.result(timeout=60)


def test_an_oversized_system_prompt_is_refused_with_its_size(client: Client) -> None:
    args = run_args("hi", ["smollm2-onnx"], columns=1)
    args[1] = "x" * 20_001
    job = client.submit(*args, api_name="/run")
    with pytest.raises(Exception, match="system prompt is 20,001 characters; the limit is 20,000"):
        job.result(timeout=60)


def test_unknown_target_is_refused(client: Client) -> None:
    job = client.submit(*run_args("hi", ["no-such-target"], columns=1), api_name="/run")
    with pytest.raises(Exception, match="no-such-target"):
        job.result(timeout=60)


def test_run_frames_carry_chat_messages_in_the_shape_gradio_sends() -> None:
    """The run event skips Gradio's postprocess (see ``playground.ui.run``), so it must build the very
    values ``gr.Chatbot.postprocess`` would have sent; a Gradio upgrade that changes them fails here."""
    import gradio as gr

    from playground.ui_stream import wire_messages
    from playground.ui_format import Turn, transcript

    messages = transcript([Turn("q1", "**a1**", ok=True), Turn("q2", "", ok=False, note="✗ boom")], "q3 🖼", None)
    assert wire_messages(messages) == gr.Chatbot().postprocess(messages).model_dump()


@pytest.mark.parametrize("max_tokens", [float("nan"), float("inf"), 1.5, "many"])
def test_max_new_tokens_that_is_not_a_whole_number_is_refused_by_name(max_tokens: object) -> None:
    from playground.catalog import Catalog
    from playground.ui import _validate

    with pytest.raises(gr.Error, match="max_tokens"):
        _validate(Catalog(targets=[], defaults=[]), "hi", "", 0.7, 1.0, max_tokens, None, [])  # type: ignore[arg-type]
    assert _validate(Catalog(targets=[], defaults=[]), "hi", "", 0.7, 1.0, 64.0, None, [])[1].max_tokens == 64


@pytest.mark.parametrize("public", [False, True])
def test_an_unknown_target_in_the_settings_stops_the_app_naming_it(public: bool) -> None:
    from playground.catalog import Catalog, Target
    from playground.public import Policy
    from playground.settings import SettingsError

    catalog = Catalog(targets=[Target(id="a", label="a", backend="openai", model="m", base_url="http://127.0.0.1:9/v1")],
                      defaults=["a"])
    settings = Settings(host="127.0.0.1", port=None, columns=1, default_targets=[] if public else ["a", "bogus"],
                        concurrency=8, catalog=None)
    policy = Policy(public=public, targets=frozenset({"nope"}) if public else None)
    name = "PLAYGROUND_PUBLIC_TARGETS: unknown target 'nope'" if public else "PLAYGROUND_DEFAULT_TARGETS: unknown target 'bogus'"
    with pytest.raises(SettingsError, match=name):
        build_ui(catalog, settings, policy)
