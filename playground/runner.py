"""Fan-out: one asyncio task per target, paced snapshots, deadlines, stop.

The runner owns concurrency and the clock. The per-target tasks run on the measurement loop
(``playground.clock``), a thread where nothing but backend I/O runs, and stamp each event as
it arrives there (or keep the producer's own stamp). The consumer's loop (Gradio's, or the
command line's) only drains what they stamped and gets a snapshot of every column at most
every ``frame_s`` seconds, at once when a column shows its first text, and at the end (on Stop
all, once with every column stopped, before the tasks are waited for, and once after).
"""

from __future__ import annotations

import asyncio
import collections
import time
from contextlib import aclosing, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Literal

from playground import measure_process, metrics, secrets, warmup
from playground.backends import local, local_backends, make_backend
from playground.backends.base import Backend
from playground.errors import BackendError
from playground.clock import TICK_S, MeasureLoop, measure_loop
from playground.events import (
    ClockReport, ErrorKind, Event, Failed, Finished, Notice, Progress, RequestSent, ServerTimings, TextDelta, Usage,
)
from playground.tokens import estimate_tokens
from playground.vision import adapt_request

if TYPE_CHECKING:
    from playground.catalog import Target
    from playground.request import ChatRequest

Status = Literal["queued", "loading", "streaming", "done", "stopped", "error"]
FINAL: frozenset[str] = frozenset({"done", "stopped", "error"})
DEFAULT_FRAME_S = 1 / 15
STAMPED_IN = ("app", "measurement process", "model process")
WARMUP_WAIT_S = 60.0
UNCERTAIN_S = 0.010  # a column whose stamps may be off by more than this says so
_DONE = object()
# per target id: did its chunk count match the server's usage last time? (absent: not yet seen)
chunks_match_usage: dict[str, bool] = {}
asked: set[tuple[str, str]] = set()  # (target, where its stream ran) any run has sent a request to


def first_request(target_id: str, place: str = "app") -> bool:
    """Mark the target asked from ``place`` (where its stream runs); True when this is its first
    request there (a model load, a new connection, a server-side cache: the run is "cold")."""
    cold = (target_id, place) not in asked
    asked.add((target_id, place))
    return cold


@dataclass
class Column:
    target: Target
    timeline: metrics.Timeline
    status: Status = "queued"
    detail: str = ""
    text: str = ""
    error: str | None = None
    error_kind: ErrorKind | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    server: ServerTimings | None = None
    notices: list[str] = field(default_factory=list)
    counted_tokens: int = 0
    exact_counts: bool = True
    chunks: int = 0  # text events without an exact count: one token each on most servers
    estimated_tokens: int = 0  # tokenizer estimate, kept up to date only where chunks are not trusted
    images_sent: int = 0
    version: int = 0
    clock_lag_s: float = 0.0  # worst lag of the measurement loop from the request to the end
    # when the request began: a backend may restamp `timeline.sent` later (when its bytes reached the
    # socket), but a stall in between could still delay that stamp, so the error bar counts from here
    lag_from: float | None = None
    # where its stamps were taken: "app" (its measurement loop, waiting on this process's GIL),
    # "measurement process" (HTTP streams under load) or "model process" (a local model's own)
    stamped_in: str = "app"
    cold: bool = False  # its request was the target's first in this process

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def shares_clock(self) -> bool:
        return self.stamped_in == "app"

    @property
    def timing_bound_s(self) -> float:
        """How late a stamp may be: the worst lag seen, plus one tick of the ticker that saw it
        (a stall shorter than a tick can fall between two)."""
        return self.clock_lag_s + TICK_S

    @property
    def timing_uncertain(self) -> bool:
        return self.timing_bound_s > UNCERTAIN_S

    def token_count(self) -> tuple[int | None, str | None]:
        server = self.usage.completion_tokens if self.usage and self.usage.source == "server" else None
        counted = self.usage.completion_tokens if self.usage and self.usage.source == "counted" else None
        if counted is None and self.exact_counts and self.timeline.deltas:
            counted = self.counted_tokens
        if server is not None or counted is not None or not self.text:
            return metrics.pick_tokens(server, counted, None)
        if chunks_match_usage.get(self.target.id, True):
            return self.chunks, "chunks"
        return self.estimated_tokens, "estimated"

    def metrics(self, now: float | None = None) -> metrics.Metrics:
        tokens, source = self.token_count()
        return metrics.summarize(self.timeline, tokens, source, now=None if self.final else now)


@dataclass
class Job:
    target: Target
    request: ChatRequest
    notices: tuple[str, ...] = ()  # shown in the column from the start (earlier turns left out, ...)


def typed_keys(jobs: list[Job]) -> frozenset[str]:
    """The keys the run's visitor typed (a run is one visitor's): blanked in its texts and its record."""
    return frozenset(key for job in jobs if job.request.credentials for key in job.request.credentials.secrets())


class Run:
    """One run over several targets. Iterate ``frames()``; call ``stop()`` from any thread."""

    def __init__(self, jobs: list[Job], frame_s: float = DEFAULT_FRAME_S,
                 backends: list[Backend] | None = None, remote: list[bool] | None = None):
        started = time.perf_counter()
        self.jobs = jobs
        self.frame_s = frame_s
        self.columns = [Column(job.target, metrics.Timeline(started=started)) for job in jobs]
        self._backends = backends
        # which columns the measurement process reads and stamps: decided once, for the ticker and the pumps
        # (``remote``: chosen by the caller, a benchmark that keeps each column in one place for all its runs)
        self._remote = ([False] * len(jobs) if backends else remote if remote is not None
                        else measure_process.choose(self, [job.target for job in jobs]))
        self._inbox: collections.deque[tuple[int, object, float]] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock: MeasureLoop | None = None
        self._stop_requested = False
        self._stop_columns: set[int] = set()
        self._lag_cursor = 0
        # a run is one visitor's: their typed keys are blanked in its texts (and only in theirs)
        self._own = typed_keys(jobs)

    def stop(self) -> None:
        self._stop_requested = True
        self._nudge()

    def stop_column(self, index: int) -> None:
        """Stop one column (from any thread); the others carry on."""
        self._stop_columns.add(index)
        self._nudge()

    def _nudge(self) -> None:
        """Wake the consumer now (from any thread)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def _post(self, index: int, item: object, at: float, urgent: bool) -> None:
        """Hand a stamped event to the consumer, from the measurement loop or (the measurement
        process's events) the thread that reads them: thread-safe, a deque append and a thread-safe
        wake-up. Only events that change what a column shows beyond its text (and a column's first
        text) wake it early."""
        self._inbox.append((index, item, at))
        if urgent:
            self._nudge()

    async def frames(self) -> AsyncIterator[list[Column]]:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._clock = clock = measure_loop()
        self._lag_cursor = clock.monitor.late_cursor()
        # its ticker matters only to columns stamped on this loop: the measurement process's columns
        # bring their own error bar, and a 5 ms tick would cost this process CPU for nothing
        watch = not all(self._remote)
        if watch:
            clock.monitor.enter()
        try:
            tasks = await clock.call(self._start())
        except BaseException:
            measure_process.release(self)
            if watch:
                clock.monitor.leave()
            raise
        pending = set(range(len(tasks)))
        next_frame = time.perf_counter() + self.frame_s
        try:
            while pending and not self._stop_requested:
                timeout = max(0.0, min(next_frame, self._next_deadline()) - time.perf_counter())
                if not self._inbox:
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout)
                    except asyncio.TimeoutError:  # not the builtin one before Python 3.11
                        pass
                self._wake.clear()
                first_text = self._drain(pending)
                self._enforce_deadlines(tasks, pending)
                self._stop_chosen(tasks, pending)
                if (first_text or time.perf_counter() >= next_frame) and pending:
                    yield self.columns
                    next_frame = time.perf_counter() + self.frame_s
            if self._stop_requested:
                # as Stop on one column: what came before it is kept, the tasks are cancelled, and the
                # columns show as stopped before the tasks are waited for (a library call that cannot
                # be left, such as OpenVINO's evaluation of a prompt, would hold them for seconds)
                cancelled = self._cancel(tasks)
                self._drain(pending)
                now = time.perf_counter()
                for column in self.columns:
                    if not column.final:
                        self._finish(column, "stopped", now)
                yield self.columns
                await cancelled
            yield self.columns
        finally:
            measure_process.release(self)
            if watch:
                clock.monitor.leave()
            await self._cancel(tasks)

    async def _start(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._pump(i, job), name=f"target:{job.target.id}")
                for i, job in enumerate(self.jobs)]

    def _drain(self, pending: set[int]) -> bool:
        """Apply what was stamped (on the measurement loop, or where the event was made); True if some column just showed its first text."""
        first_text = False
        while self._inbox:
            index, item, at = self._inbox.popleft()
            if item is _DONE:
                pending.discard(index)
                continue
            column = self.columns[index]
            first_text |= isinstance(item, TextDelta) and not column.text and bool(item.text)
            self._apply(column, item, at)  # type: ignore[arg-type]
        self._update_lag()
        return first_text

    def _update_lag(self) -> None:
        assert self._clock is not None
        stalls, self._lag_cursor = self._clock.monitor.late_since(self._lag_cursor)
        for at, lag in stalls:
            for column in self.columns:  # stalls before the request cannot bend TTFT, decode or E2E
                sent, ended = column.lag_from, column.timeline.ended
                if column.shares_clock and sent is not None and at >= sent and (ended is None or at - lag <= ended):
                    column.clock_lag_s = max(column.clock_lag_s, lag)

    def _cancel(self, tasks: list[asyncio.Task[None]]) -> Awaitable[None]:
        """Cancel the tasks on the measurement loop now; awaiting the result waits for them to end
        there, even if the awaiting task is cancelled."""
        assert self._clock is not None
        return asyncio.shield(asyncio.wrap_future(self._clock.submit(_cancel_all(tasks))))

    def _next_deadline(self) -> float:
        deadlines = [c.timeline.sent + c.target.timeout_s for c in self.columns
                     if not c.final and c.timeline.sent is not None]
        return min(deadlines, default=float("inf"))

    def _stop_chosen(self, tasks: list[asyncio.Task[None]], pending: set[int]) -> None:
        """Columns stopped on their own: their task is cancelled (a local model stops within a token),
        their text and figures so far are kept, and the run goes on without them."""
        assert self._clock is not None
        while self._stop_columns:
            index = self._stop_columns.pop()
            if index in pending and not self.columns[index].final:
                self._clock.loop.call_soon_threadsafe(tasks[index].cancel)
                pending.discard(index)
                self._finish(self.columns[index], "stopped", time.perf_counter())

    def _enforce_deadlines(self, tasks: list[asyncio.Task[None]], pending: set[int]) -> None:
        assert self._clock is not None
        now = time.perf_counter()
        for i, column in enumerate(self.columns):
            sent = column.timeline.sent
            if not column.final and sent is not None and now - sent > column.target.timeout_s:
                self._clock.loop.call_soon_threadsafe(tasks[i].cancel)
                pending.discard(i)
                self._fail(column, ErrorKind.TIMEOUT, f"no complete answer within {column.target.timeout_s:g} s", now)

    async def _pump(self, index: int, job: Job) -> None:
        """Runs on the measurement loop: every event is stamped here, the moment it arrives, unless it
        comes stamped (a local engine's thread or process, the measurement process; the last hands its
        events to the inbox from the thread that reads them, without this loop)."""
        post = self._post
        for note in job.notices:
            post(index, Notice(note), time.perf_counter(), True)
        if self._remote[index]:
            self.columns[index].stamped_in = "measurement process"
        try:
            if warmup.pending():  # the app has just started: its imports would stall this loop
                post(index, Progress("the app is starting up…"), time.perf_counter(), True)
                await asyncio.to_thread(warmup.wait, WARMUP_WAIT_S)
            # importing a backend's SDK and checking availability (which may ask a server) block:
            # in a thread, so that other columns' stamps never wait on them
            backend = self._backends[index] if self._backends else await asyncio.to_thread(make_backend, job.target)
            available = await asyncio.to_thread(backend.availability)
            if getattr(backend, "stamps_in_own_process", False):
                self.columns[index].stamped_in = "model process"
            if not available.runnable and job.request.credentials is None:  # a visitor's own keys may make it runnable
                raise BackendError(ErrorKind.UNAVAILABLE, available.reason)
            request = job.request
            if request.images:  # text-only targets get none, and say so; the others get them fitted
                takes_images = bool(getattr(backend, "supports_vision", False))
                request, notes = await asyncio.to_thread(adapt_request, request, job.target, takes_images)
                self.columns[index].images_sent = len(request.images)
                for note in notes:
                    post(index, Notice(note), time.perf_counter(), True)
            remote = self._remote[index]
            self.columns[index].cold = first_request(job.target.id, self.columns[index].stamped_in)
            seen_text = False

            def deliver(event: Event) -> None:
                nonlocal seen_text
                at = getattr(event, "at", None) or time.perf_counter()
                if isinstance(event, TextDelta):
                    post(index, event, at, not seen_text)
                    seen_text = seen_text or bool(event.text)
                else:
                    post(index, event, at, True)

            if remote:  # read and stamped in its own process; its events come straight to the inbox
                await measure_process.deliver(job.target, request, deliver)
                return
            # local engines pick their threads from how many local columns run at once
            running = local.running_column() if job.target.backend in local_backends() else nullcontext()
            with running:
                async with aclosing(backend.stream(request)) as events:
                    async for event in events:
                        deliver(event)
        except Exception as exc:  # noqa: BLE001 - one broken target never breaks another
            error = BackendError.wrap(exc)
            post(index, Failed(error.kind, error.message, error.retry_after), time.perf_counter(), True)
        finally:
            post(index, _DONE, time.perf_counter(), True)

    def _apply(self, column: Column, event: Event, at: float) -> None:
        if isinstance(event, ClockReport):  # comes after the end, from the process that stamped the column
            column.clock_lag_s = max(column.clock_lag_s, event.worst_lag_s)
            column.version += 1
            return
        if column.final:
            return
        column.version += 1
        if isinstance(event, TextDelta):
            column.status = "streaming"
            column.detail = ""
            column.text += event.text
            column.timeline.deltas.append(metrics.Delta(at, len(event.text), event.tokens))
            if event.tokens is None:
                column.exact_counts = False
                column.chunks += 1
                if not chunks_match_usage.get(column.target.id, True):
                    column.estimated_tokens += estimate_tokens(event.text)  # the new text only
            else:
                column.counted_tokens += event.tokens
        elif isinstance(event, RequestSent):
            column.timeline.sent = at
            column.lag_from = at if column.lag_from is None else min(column.lag_from, at)
            column.status, column.detail = "streaming", "waiting for the first token"
        elif isinstance(event, Progress):
            column.status, column.detail = "loading", secrets.redact(event.message, self._own)
        elif isinstance(event, Usage):
            column.usage = event
            if event.source == "server" and column.chunks:
                chunks_match_usage[column.target.id] = event.completion_tokens == column.chunks
        elif isinstance(event, ServerTimings):
            column.server = event
        elif isinstance(event, Notice):
            column.notices.append(secrets.redact(event.message, self._own))
        elif isinstance(event, Finished):
            column.finish_reason = event.reason
            self._finish(column, "stopped" if event.reason == "stopped" else "done", at)
        elif isinstance(event, Failed):
            self._fail(column, event.kind, event.message, at)

    def _fail(self, column: Column, kind: ErrorKind, message: str, at: float) -> None:
        if kind is ErrorKind.TRUNCATED:
            tokens, source = column.token_count()
            message = f"stream cut after {metrics.tokens_text(tokens or 0, source)} tokens: {message}"
        # every backend's errors pass here: none may carry a key to the page, a table or an export
        column.error, column.error_kind = secrets.redact(message, self._own), kind
        self._finish(column, "error", at)

    def _finish(self, column: Column, status: Status, at: float) -> None:
        column.status, column.detail = status, ""
        column.timeline.ended = at
        column.version += 1
        if self._clock is not None and column.shares_clock and column.timeline.sent is not None:
            # stalls already ticked reach the column through _update_lag; add one still going on
            column.clock_lag_s = max(column.clock_lag_s, self._clock.monitor.stalled_s(at))


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def run_to_end(jobs: list[Job], frame_s: float = DEFAULT_FRAME_S) -> list[Column]:
    columns: list[Column] = []
    async for columns in Run(jobs, frame_s=frame_s).frames():
        pass
    return columns
