"""The streaming half of the UI without a browser: pacing of frames to the page, and the page's values."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

import gradio as gr
import pytest

from playground.ui_stream import _paced


async def scripted(gaps_s: list[float], fail: bool = False) -> AsyncIterator[list[Any]]:
    """Frames after the given gaps; each frame is the list [n] of frames made so far."""
    state: list[Any] = [0]
    for gap in gaps_s:
        await asyncio.sleep(gap)
        state[0] += 1
        yield state
    if fail:
        raise RuntimeError("runner broke")


async def collect(source: AsyncIterator[list[Any]], gap_s: float) -> list[tuple[float, int]]:
    start = time.perf_counter()
    return [(time.perf_counter() - start, frame[0]) async for frame in _paced(source, gap_s)]


def test_a_burst_of_frames_becomes_one_and_the_last_state_always_arrives() -> None:
    # five frames 2 ms apart (a burst of first tokens), then one 100 ms later
    seen = asyncio.run(collect(scripted([0.0, 0.002, 0.002, 0.002, 0.002, 0.1]), gap_s=0.03))
    counts = [count for _, count in seen]
    assert counts[0] == 1, "the first frame goes out at once"
    assert len(seen) <= 4, f"the burst was not merged: {seen}"
    assert counts[-1] == 6, "the newest state is always sent last"
    assert all(b - a >= 0.025 for (a, _), (b, _) in zip(seen, seen[1:])), seen


def test_frames_far_apart_pass_untouched() -> None:
    seen = asyncio.run(collect(scripted([0.0, 0.05, 0.05, 0.05]), gap_s=0.03))
    assert [count for _, count in seen] == [1, 2, 3, 4]


def test_a_failure_of_the_runner_reaches_the_page() -> None:
    with pytest.raises(RuntimeError, match="runner broke"):
        asyncio.run(collect(scripted([0.0, 0.01], fail=True), gap_s=0.03))


def test_closing_the_page_side_closes_the_runner() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[list[Any]]:
        try:
            while True:
                await asyncio.sleep(0.005)
                yield [0]
        finally:
            closed.set()

    async def main() -> None:
        paced = _paced(endless(), 0.01)
        await paced.__anext__()
        await paced.aclose()
        await asyncio.wait_for(closed.wait(), 1.0)

    asyncio.run(main())


def page_frames(plan: Any, frames: list[Any]) -> list[list[Any]]:
    from playground.ui_stream import page_values

    async def source() -> AsyncIterator[Any]:
        for frame in frames:
            yield frame

    async def run() -> list[list[Any]]:
        return [values async for values in page_values(plan, source())]

    return asyncio.run(run())


def test_the_page_streams_into_the_live_box_and_renders_the_chat_once_at_the_end() -> None:
    from playground.catalog import Target
    from playground.metrics import Timeline
    from playground.runner import Column, Job
    from playground.settings import MAX_COLUMNS
    from playground.ui_format import Turn
    from playground.ui_stream import BENCH_OUTPUTS, Frame, Outcome, Plan, Recorded, results_values, wire_messages

    target = Target(id="t", label="t", backend="openai", model="m", base_url="http://127.0.0.1:1/v1")
    column = Column(target, Timeline(started=0.0), status="streaming", detail="waiting for the first token")
    histories = [[Turn("q0", "a0", ok=True)]] + [[] for _ in range(MAX_COLUMNS - 1)]
    plan = Plan("s", "q1", "q1", "", None, (), [Job(target, None)], histories)  # type: ignore[arg-type]
    done = [[Turn("q0", "a0", ok=True), Turn("q1", "**t0 t1**", ok=True)]] + histories[1:]
    outcome = Outcome(done, {"data": []}, {"path": "a.csv"}, {"path": "a.json"}, ["print('the code')"], None,
                      Recorded("run-id-1", "Recorded as `run-id-1`"))
    waiting = Frame([column], ["s"] * MAX_COLUMNS)
    values = page_frames(plan, [waiting, waiting, Frame([column], ["s"] * MAX_COLUMNS, outcome)])
    chats = slice(0, MAX_COLUMNS)
    lives = slice(2 * MAX_COLUMNS + 2, 3 * MAX_COLUMNS + 2)
    first, second, last = values
    # the chat shows the history and the prompt; the live box shows the column's state. Only values:
    # a box is shown by holding text (ui.CSS), as a prop update would rebuild its config on the server
    assert [m["role"] for m in first[chats][0]] == ["user", "assistant", "user"]
    assert first[lives][0] == "waiting for the first token…" and first[lives][1] == ""
    # later frames send the box's text alone, and the very same chat value (nothing for the page to redo)
    assert second[lives][0] == "waiting for the first token…" and second[chats][0] is first[chats][0]
    # at the end the box empties (and so hides) and the chat gets the answer, as Markdown
    assert last[lives] == [""] * MAX_COLUMNS
    assert last[chats][0] == wire_messages([{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"},
                                            {"role": "user", "content": "q1"},
                                            {"role": "assistant", "content": "**t0 t1**"}])
    # the states: set in the first frame (no earlier run's results), left alone while streaming
    # (a State's value rebuilds its config entry each frame), set to the outcome at the end
    assert first[2 * MAX_COLUMNS] is plan.histories and first[2 * MAX_COLUMNS + 1] is None
    assert second[2 * MAX_COLUMNS:2 * MAX_COLUMNS + 2] == [gr.skip(), gr.skip()]
    assert last[2 * MAX_COLUMNS] == done and last[2 * MAX_COLUMNS + 1][0] == {"data": []}
    table, csv_file, _, code, *others = results_values(last[2 * MAX_COLUMNS + 1])
    assert table == {"data": []} and csv_file["visible"] is True and csv_file["value"] == {"path": "a.csv"}
    *others, recorded_line, run_id = others
    assert recorded_line == "Recorded as `run-id-1`" and run_id == "run-id-1"  # the History panel picks it
    assert code == "print('the code')" and len(others) == MAX_COLUMNS - 1 + BENCH_OUTPUTS
    assert all(o == {"__type__": "update"} for o in others[:MAX_COLUMNS - 1])  # the other columns' code stays
    assert all(o["visible"] is False for o in others[MAX_COLUMNS - 1:])  # a single run: no benchmark results


def test_a_skip_leaves_a_state_as_it_is_and_builds_nothing() -> None:
    """What page_values relies on, in the Gradio this project pins: a skip for a State output
    neither changes the session's value nor builds a component (a value does rebuild its entry)."""
    from gradio.state_holder import SessionState

    with gr.Blocks() as demo:
        state = gr.State([])
        button = gr.Button()
        button.click(lambda: None, None, state)
    session = SessionState(demo)
    session[state._id] = ["kept"]
    block_fn = demo.fns[0]

    async def post(value: Any) -> list[Any]:
        return await demo.postprocess_data(block_fn, value, session)

    assert asyncio.run(post(gr.skip())) == [None]
    assert session[state._id] == ["kept"]
    asyncio.run(post(["new"]))
    assert session[state._id] == ["new"]


def test_clear_while_the_outcome_is_made_keeps_it_unsent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clear after the last text frame but before the outcome (the record, the exports, the table:
    a thread's work) waits for the run to end, and the outcome, which would bring the cleared
    answer back, never goes out."""
    import threading

    from playground import ui_stream
    from playground.catalog import Target
    from playground.request import ChatRequest, build_messages, make_params
    from playground.runner import Job
    from playground.settings import MAX_COLUMNS

    document = {"format": 1, "prompt": "Name a fruit.", "recorded_at": 1795900000, "parameters": {"temperature": 0},
                "results": [{"id": "t", "label": "recorded", "text": "A mango.", "output_tokens": 3,
                             "tokens_source": "counted", "ttft_s": 0.1}],
                "timelines": [{"events": [[0.1, 2, 1], [0.2, 6, 2]], "ended": 0.25, "status": "done"}]}
    target = Target(id="t", label="t", backend="openai", model="m", base_url="http://127.0.0.1:1/v1")
    params = make_params(temperature=0)
    plan = ui_stream.Plan("clear-in-outcome", "Name a fruit.", "Name a fruit.", "", params, (),
                          [Job(target, ChatRequest(build_messages("Name a fruit."), params))],
                          [[] for _ in range(MAX_COLUMNS)], replay=document, speed=None)
    entered, release = threading.Event(), threading.Event()
    made = ui_stream._results

    def slow_results(*args: Any) -> Any:
        entered.set()
        release.wait(10)
        return made(*args)

    monkeypatch.setattr(ui_stream, "_results", slow_results)
    cleared = threading.Event()

    def press_clear() -> None:
        assert entered.wait(10), "the outcome was never started"
        clearing = threading.Thread(target=ui_stream.clear, args=(plan.session,))
        clearing.start()
        active = ui_stream._active_runs.get(plan.session)
        deadline = time.monotonic() + 5
        while active is not None and not active.cleared and time.monotonic() < deadline:
            time.sleep(0.005)
        release.set()
        clearing.join(10)
        cleared.set()

    async def run() -> list[Any]:
        return [frame async for frame in ui_stream.frames(plan, gr.Dataframe(), gr.DownloadButton())]

    presser = threading.Thread(target=press_clear)
    presser.start()
    frames = asyncio.run(run())
    presser.join(10)
    assert cleared.is_set(), "Clear did not return"
    assert frames and all(frame.outcome is None for frame in frames), "the cleared run's outcome went out"
    assert plan.session not in ui_stream._active_runs
