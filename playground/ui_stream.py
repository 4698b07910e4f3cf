"""One run, frame by frame, as the values Gradio sends: the streaming half of the UI.

What a frame costs decides the shape of this module (measured with ``bench/browser_stream.py``):

- The run events skip Gradio's postprocess (a pydantic pass over every column's whole transcript
  and a thread hop per output, each frame), so the values are built here in their wire shape.
- Every frame carries a value for every output, never ``gr.skip()``: Gradio turns a skip into a new
  component and its JSON schema, each frame. The exception is a ``gr.State``: a skip leaves it
  alone, while a value rebuilds its config entry, so the states are set in the first and last frames.
- The page streams each answer as plain text into a light textbox and renders it as Markdown once,
  in the chat, when the run ends: a chat re-renders its Markdown, and measures itself, on every
  change. The API's ``/run`` streams into the chat, as it always has.
- Status lines tick every ``STATUS_REFRESH_S`` while a column streams; state changes show at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator

import gradio as gr

from playground import charts, difference, exports, records, repeats, roofline, stats
from playground.records import RecordError
from playground.repeats import RepeatedRun
from playground.replay import Replay
from playground.replay import when as replay_when
from playground.snippets import snippet
from playground.report import (
    results_frame, roofline_entry, run_document, with_environment, write_bench_exports, write_exports,
)
from playground.runner import Job, Run, typed_keys
from playground.settings import MAX_COLUMNS
from playground.ui_format import Turn, finished_turn, live_answer, status_markdown, transcript

if TYPE_CHECKING:
    from playground.images import PreparedImage
    from playground.runner import Column

log = logging.getLogger(__name__)
STATUS_REFRESH_S = 0.25
# The outcome (six answers rendered as Markdown, the results table) costs the page tens of ms; sent on
# the heels of the last text, the page would paint both at once, so the last tokens would wait for it.
OUTCOME_AFTER_S = 0.05
MIN_GAP_S = 0.03  # between two frames sent to the page (see _paced)
CLEAR_WAIT_S = 5.0  # a stopped run ends within a frame or two; a stuck one does not hold Clear longer


@dataclass
class _Active:
    """A session's run in progress, as Stop and Clear find it."""

    run: Run | RepeatedRun | Replay
    ended: threading.Event = field(default_factory=threading.Event)  # its last frame has gone out
    cleared: bool = False  # the page was cleared: the run shows nothing more


_active_runs: dict[str, _Active] = {}


def wire_message(role: str, text: str) -> dict[str, Any]:
    """A text chat message as ``gr.Chatbot.postprocess`` leaves it: the shape the page receives."""
    return {"role": role, "metadata": None, "content": [{"text": text, "type": "text"}], "options": None}


def wire_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [wire_message(m["role"], m["content"]) for m in messages]


@dataclass(frozen=True)
class Benchmark:
    """Benchmark mode's settings for one run: each column runs ``warmup`` + ``repeat`` times."""

    repeat: int
    warmup: int
    fair: bool
    objectives: stats.Objectives | None


@dataclass
class Plan:
    """One validated run."""

    session: str
    prompt_text: str
    shown_prompt: str  # what the transcript shows: the prompt, and the images' names
    system_text: str
    params: Any
    images: tuple[PreparedImage, ...]
    jobs: list[Job]
    histories: list[list[Turn]]
    benchmark: Benchmark | None = None
    replay: dict[str, Any] | None = None  # a recorded run to play back instead of running the jobs
    speed: float | None = 1.0  # the replay's pace (None: at once)

    @property
    def count(self) -> int:
        return len(self.jobs)


@dataclass
class Outcome:
    histories: list[list[Turn]]
    table: dict[str, Any]
    csv_file: dict[str, Any]
    json_file: dict[str, Any]
    codes: list[str]  # per column: the program that sends its request (snippets)
    bench: BenchOutcome | None = None
    recorded: Recorded | None = None


@dataclass
class BenchOutcome:
    """Benchmark mode's results: a summary, the statistics table and two charts."""

    summary: str
    table: dict[str, Any]
    ttft_chart: dict[str, Any] | None
    decode_chart: dict[str, Any] | None
    notes: dict[int, str]  # per column: where its greedy answer first leaves another target's


@dataclass
class Frame:
    columns: list[Column]
    statuses: list[str]  # one per column slot
    outcome: Outcome | None = None  # the last frame only


def stop(session: str) -> None:
    active = _active_runs.get(session)
    if active is not None:
        active.run.stop()


def clear(session: str, wait_s: float = CLEAR_WAIT_S) -> None:
    """Clear, pressed while the session's run streams: the run stops and shows nothing more, neither
    a frame nor its outcome (a late frame would bring back the text just cleared, and its history
    would go with the next prompt). Blocking: returns once the run's last frame has gone out (at
    most ``wait_s``), so that what the caller then empties stays empty."""
    active = _active_runs.get(session)
    if active is not None:
        active.cleared = True
        active.run.stop()
        active.ended.wait(wait_s)


def stop_column(session: str, index: int) -> None:
    active = _active_runs.get(session)
    if active is not None and 0 <= index < len(active.run.columns):
        active.run.stop_column(index)


def _status_state(column: Column) -> tuple[Any, ...]:
    """What changes a status line at once. The running figures (E2E, tok/s, tokens) only tick."""
    return column.status, column.detail, bool(column.text), column.error, len(column.notices), column.timing_uncertain


async def frames(plan: Plan, table: gr.Dataframe, download: gr.DownloadButton) -> AsyncIterator[Frame]:
    """The run's frames, with status lines; then one more with its outcome (history, results, files)."""
    bench = plan.benchmark
    run: Run | RepeatedRun | Replay
    if plan.replay is not None:
        run = Replay(plan.replay, plan.speed)
    elif bench is not None:
        run = RepeatedRun(plan.jobs, bench.repeat, bench.warmup, bench.fair)
    else:
        run = Run(plan.jobs)
    phases: list[str] = getattr(run, "phase", [""] * plan.count)  # "run 3 of 10", "replay of …"
    previous = _active_runs.pop(plan.session, None)
    if previous is not None:
        previous.run.stop()
    active = _active_runs[plan.session] = _Active(run)
    statuses = [""] * MAX_COLUMNS
    shown: list[tuple[Any, ...] | None] = [None] * plan.count
    due = [0.0] * plan.count
    clock = run.now if isinstance(run, Replay) else time.perf_counter  # a replay at 2× keeps its own time
    try:
        async for columns in _paced(run.frames(), MIN_GAP_S):
            if active.cleared:
                continue  # stopped: let it end, and show nothing of it
            now = time.perf_counter()
            for i, column in enumerate(columns):
                phase = phases[i]
                state = (*_status_state(column), phase)
                if state != shown[i] or (column.status == "streaming" and now >= due[i]):
                    statuses[i] = (f"**{phase}** · " if phase else "") + status_markdown(column, clock())
                    shown[i], due[i] = state, now + STATUS_REFRESH_S
            yield Frame(columns, statuses)
        if active.cleared:
            return
        histories = [list(h) for h in plan.histories]
        for i, column in enumerate(run.columns):
            histories[i].append(finished_turn(plan.shown_prompt, column))
            histories[i][-1].sent_user = plan.prompt_text
        samples = run.samples if isinstance(run, RepeatedRun) else None
        # The last text's frame goes out first: the record, the exports and the table (the document
        # hashes and thumbnails the images: in a thread, off this loop) hold the GIL for 10-30 ms, and
        # started beside it they delayed it. Two sessions ending together: the last token on screen
        # 111-152 ms after the server sent it (median, two benchmark runs), 70-101 ms once it waits.
        await asyncio.sleep(OUTCOME_AFTER_S)
        (*results, ceilings) = await asyncio.to_thread(_results, plan, table, download, run.columns, samples)
        if active.cleared:  # Clear came while the outcome was made: it stays unsent, as the frames did
            return
        final = [(f"**{phase}** · " if phase else "") + status_markdown(c, ceiling=ceiling)
                 for c, phase, ceiling in zip(run.columns, phases, ceilings)] + statuses[plan.count:]
        bench = results[4]
        for i, note in (bench.notes if bench else {}).items():
            turn = histories[i][-1]
            turn.note = f"{turn.note}\n\n{note}".strip()
        yield Frame(run.columns, final, Outcome(histories, *results))
    finally:
        if _active_runs.get(plan.session) is active:
            del _active_runs[plan.session]
        # every frame before this one has gone out, the outcome's too: Gradio asks for the next only
        # after sending it (a Clear that waits on this has nothing left to undo it)
        active.ended.set()


async def _paced(source: AsyncIterator[list[Column]], min_gap_s: float) -> AsyncIterator[list[Column]]:
    """The runner's frames, at most one per ``min_gap_s``, each the newest state.

    The runner sends a frame at once when a column shows its first text or changes state, so six
    columns whose first tokens land within a few ms make six frames, and the page, which spends
    10-25 ms on each, shows the sixth column's first token last of all. Here a frame that follows
    another by less than ``min_gap_s`` waits out the gap and carries everything that came meanwhile.
    """
    newest: list[Column] | None = None
    fresh = asyncio.Event()
    ended = False
    failure: BaseException | None = None

    async def pump() -> None:
        nonlocal newest, ended, failure
        try:
            async with aclosing(source) as frames_:
                async for columns in frames_:
                    newest = columns
                    fresh.set()
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            failure = exc
        finally:
            ended = True
            fresh.set()

    task = asyncio.create_task(pump())
    last = -float("inf")
    try:
        while True:
            await fresh.wait()
            wait = last + min_gap_s - time.perf_counter()
            if wait > 0 and not ended:
                await asyncio.sleep(wait)
            fresh.clear()
            if failure is not None:
                raise failure
            if newest is not None:
                yield newest
                last = time.perf_counter()
            if ended and not fresh.is_set():
                return
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _results(plan: Plan, table: gr.Dataframe, download: gr.DownloadButton,
             columns: list[Column], samples: list[list[repeats.Sample]] | None
             ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[str], BenchOutcome | None, Recorded,
                        list[roofline.Ceiling | None]]:
    """The results table, the two downloads (file writes: in a thread), each column's code, in
    benchmark mode the statistics, the charts and the benchmark's own exports, the run's record, and
    each local column's roofline (the bandwidth is measured here the first time, off every loop)."""
    requests = [job.request for job in plan.jobs]
    document = run_document(plan.prompt_text, plan.system_text, plan.params, columns, plan.images)
    ceilings = [None if plan.replay is not None else _ceiling(c) for c in columns]  # a replay: another machine's
    for result, column, ceiling in zip(document["results"], columns, ceilings):
        if ceiling is not None:
            result["roofline"] = roofline_entry(ceiling, column.metrics().decode_tokens_per_s or 0.0)
    if plan.replay is not None:  # what was recorded, not this machine's
        document = {**document, "environment": plan.replay.get("environment"),
                    "replay_of": plan.replay.get("recorded_at")}
        codes = [""] * len(columns)
        recorded = Recorded(None, f"a replay of {replay_when(plan.replay)}: not recorded again")
    else:
        document = with_environment(document, [c.target for c in columns])
        codes = [snippet(c.target, r) for c, r in zip(columns, requests)]
        typed_urls = tuple(url for job in plan.jobs if job.request.credentials is not None
                           for url in [job.request.credentials.get("PLAYGROUND_USER_BASE_URL")] if url)
        recorded = _record(document, columns, plan.session, typed_urls, tuple(typed_keys(plan.jobs)))
    folder = exports.new_folder(plan.session)
    bench = None
    if plan.benchmark is not None and samples is not None:
        b = plan.benchmark
        targets = [job.target for job in plan.jobs]
        bench_doc = repeats.document(targets, samples, requests[0], plan.prompt_text, b.repeat, b.warmup,
                                     b.objectives, b.fair)
        bench_doc["environment"] = document["environment"]  # with each target's model file or endpoint
        bench_doc["last_run"] = document
        csv_path, json_path = write_bench_exports(bench_doc, folder)
        bench = BenchOutcome(repeats.summary_markdown(bench_doc) + f"\n\n*Charts: {charts.CAPTION}.*",
                             table.postprocess(repeats.statistics_frame(bench_doc)).model_dump(),
                             charts.plot_value(bench_doc, "ttft_s"), charts.plot_value(bench_doc, "decode_tokens_per_s"),
                             difference.difference_notes(bench_doc, [t.id for t in targets]))
    else:
        recorded_at = plan.replay.get("recorded_at") if plan.replay is not None else None  # a replay: the original's
        csv_path, json_path = write_exports(records.replayable(document, columns, recorded_at), folder)  # importable
    return (table.postprocess(results_frame(columns, ceilings)).model_dump(),
            download.postprocess(str(csv_path)).model_dump(), download.postprocess(str(json_path)).model_dump(),
            codes, bench, recorded, ceilings)


def _ceiling(column: Column) -> roofline.Ceiling | None:
    """A finished local column's roofline; None for a remote one, a failed run or unknown weights."""
    if column.status != "done" or not column.metrics().decode_tokens_per_s:
        return None
    try:
        return roofline.for_target(column.target)
    except OSError as exc:  # a model file removed since the run: no roofline, the results still come
        log.warning("no roofline for %s: %s", column.target.id, exc)
        return None


@dataclass(frozen=True)
class Recorded:
    """A run's record: its id in the run database (None when it was not recorded), and what to say."""

    run_id: str | None
    message: str
    failed: bool = False  # the database could not take it (not: recording is off)


def _record(document: dict[str, Any], columns: list[Column], session: str, private: tuple[str, ...] = (),
            keys: tuple[str, ...] = ()) -> Recorded:
    if records.url() is None:  # before the document is serialised and redacted for nothing
        return Recorded(None, "Recording is off (PLAYGROUND_DB=off).")
    try:
        run_id = records.record(document, columns, session, private=private, keys=keys)
    except RecordError as exc:  # a full or read-only database fails the recording, never the run
        log.warning("%s", exc)
        return Recorded(None, f"⚠ {exc}", failed=True)
    return Recorded(run_id, f"Recorded as `{run_id}`: replay or export it under *History*.")


def _tail(frame: Frame, plan: Plan, empty_table: dict[str, Any], first: bool, statistics: bool) -> list[Any]:
    """Results table, the two downloads and the histories state (and the benchmark's statistics)."""
    out = frame.outcome
    bench = [out.bench.table if out is not None and out.bench else empty_table] if statistics else []
    if out is None:  # the last run's files go with its table
        hidden = gr.update(visible="hidden") if first else None
        return [empty_table, hidden, hidden, plan.histories, *bench]
    return [out.table, gr.update(value=out.csv_file, visible=True), gr.update(value=out.json_file, visible=True),
            out.histories, *bench]


async def api_values(plan: Plan, stream: AsyncIterator[Frame], empty_table: dict[str, Any], statistics: bool = False
                     ) -> AsyncIterator[list[Any]]:
    """``/run``'s outputs (chats, statuses, table, downloads, histories, benchmark statistics): each answer
    streams in its chat."""
    earlier = [wire_messages(transcript(h)) for h in plan.histories]  # unused columns keep their history
    asked = wire_message("user", plan.shown_prompt)
    chats = list(earlier)
    seen = [-1] * plan.count
    first = True
    async for frame in stream:
        for i, column in enumerate(frame.columns):
            if frame.outcome is not None:
                chats[i] = wire_messages(transcript(frame.outcome.histories[i]))
            elif column.version != seen[i]:
                chats[i] = earlier[i] + [asked, wire_message("assistant", live_answer(column))]
                seen[i] = column.version
        yield chats + frame.statuses + _tail(frame, plan, empty_table, first, statistics)
        first = False


async def page_values(plan: Plan, stream: AsyncIterator[Frame]) -> AsyncIterator[list[Any]]:
    """The page's outputs: chats, statuses, the histories and the results states, a live textbox per
    column. While the run streams, a chat shows its history and the prompt, and the answer grows as
    plain text in the column's live box; at the end the box hides and the chat gets the answer,
    rendered once. The results table and the downloads are not outputs: a follow-up event shows
    them from the results state (see ``results_values``), so no frame carries them."""
    asked = wire_message("user", plan.shown_prompt)
    chats = [wire_messages(transcript(h)) + ([asked] if i < plan.count else [])
             for i, h in enumerate(plan.histories)]
    first = True
    async for frame in stream:
        if frame.outcome is not None:
            for i in range(plan.count):
                chats[i] = wire_messages(transcript(frame.outcome.histories[i]))
            lives: list[Any] = [""] * MAX_COLUMNS  # an empty live box hides itself (ui.CSS)
        else:
            lives = [live_answer(c, as_text=True) for c in frame.columns] + [""] * (MAX_COLUMNS - plan.count)
        out = frame.outcome
        if out is not None:
            states = [out.histories, (out.table, out.csv_file, out.json_file, out.codes, out.bench, out.recorded)]
        elif first:  # no earlier run's results for the follow-up event, should this run end without an outcome
            states = [plan.histories, None]
        else:  # setting a State rebuilds its config entry (tens of ms a run); a skip leaves it as it is
            states = [gr.skip(), gr.skip()]
        yield chats + frame.statuses + states + lives
        first = False


BENCH_OUTPUTS = 4  # the summary, the statistics table, two charts


def results_values(results: tuple[Any, ...] | None) -> list[Any]:
    """The results table, the two downloads, each column's code, benchmark mode's summary, table and
    charts (hidden after a single run), and the run's record (what to say; its id), of the run
    that just ended (the page's follow-up event)."""
    if results is None:  # the run failed before it began
        return [gr.skip()] * (3 + MAX_COLUMNS + BENCH_OUTPUTS + 2)
    table, csv_file, json_file, codes, bench, recorded = results
    if recorded.failed:  # the line is under History, out of sight: the run is fine, its record is not
        gr.Warning(f"This run was not recorded (History, replay and share links lack it): {recorded.message[2:]}")
    return [table, gr.update(value=csv_file, visible=True), gr.update(value=json_file, visible=True),
            *codes, *[gr.skip()] * (MAX_COLUMNS - len(codes)), *bench_values(bench),
            recorded.message, recorded.run_id if recorded.run_id else gr.skip()]


def bench_values(bench: BenchOutcome | None) -> list[Any]:
    if bench is None:
        return [gr.update(visible=False)] * BENCH_OUTPUTS
    return [gr.update(value=bench.summary, visible=True), gr.update(value=bench.table, visible=True),
            gr.update(value=bench.ttft_chart, visible=bench.ttft_chart is not None),
            gr.update(value=bench.decode_chart, visible=bench.decode_chart is not None)]
