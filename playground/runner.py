"""Fan-out: one asyncio task per target, one merged queue, paced snapshots, deadlines, stop.

The runner owns concurrency and the clock. Each task stamps events as they arrive (or
keeps the producer's own stamp) and pushes them into one queue. The consumer gets a
snapshot of every column at most every ``frame_s`` seconds, and once more at the end.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Literal

from playground import metrics
from playground.backends import make_backend
from playground.backends.base import Backend, BackendError
from playground.events import (
    ErrorKind, Event, Failed, Finished, Notice, Progress, RequestSent, ServerTimings, TextDelta, Usage,
)
from playground.tokens import estimate_tokens
from playground.vision import adapt_request

if TYPE_CHECKING:
    from playground.catalog import Target
    from playground.request import ChatRequest

Status = Literal["queued", "loading", "streaming", "done", "stopped", "error"]
FINAL: frozenset[str] = frozenset({"done", "stopped", "error"})
DEFAULT_FRAME_S = 1 / 15
_DONE = object()
_STOP = object()


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
    images_sent: int = 0
    version: int = 0

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def token_count(self) -> tuple[int | None, str | None]:
        server = self.usage.completion_tokens if self.usage and self.usage.source == "server" else None
        counted = self.usage.completion_tokens if self.usage and self.usage.source == "counted" else None
        if counted is None and self.exact_counts and self.timeline.deltas:
            counted = self.counted_tokens
        estimated = None
        if server is None and counted is None and self.text:
            estimated = estimate_tokens(self.text)
        return metrics.pick_tokens(server, counted, estimated)

    def metrics(self, now: float | None = None) -> metrics.Metrics:
        tokens, source = self.token_count()
        return metrics.summarize(self.timeline, tokens, source, now=None if self.final else now)


@dataclass
class Job:
    target: Target
    request: ChatRequest


class Run:
    """One run over several targets. Iterate ``frames()``; call ``stop()`` from any thread."""

    def __init__(self, jobs: list[Job], frame_s: float = DEFAULT_FRAME_S,
                 backends: list[Backend] | None = None):
        started = time.perf_counter()
        self.jobs = jobs
        self.frame_s = frame_s
        self.columns = [Column(job.target, metrics.Timeline(started=started)) for job in jobs]
        self._backends = backends
        self._queue: asyncio.Queue[tuple[int, object, float]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False

    def stop(self) -> None:
        self._stop_requested = True
        if self._loop is not None and self._queue is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (-1, _STOP, 0.0))

    async def frames(self) -> AsyncIterator[list[Column]]:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        tasks = [
            asyncio.create_task(self._pump(i, job), name=f"target:{job.target.id}")
            for i, job in enumerate(self.jobs)
        ]
        pending = set(range(len(tasks)))
        next_frame = time.perf_counter() + self.frame_s
        try:
            while pending and not self._stop_requested:
                timeout = max(0.0, min(next_frame, self._next_deadline()) - time.perf_counter())
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout)
                except asyncio.TimeoutError:  # not the builtin one before Python 3.11
                    item = None
                while item is not None:
                    if item[1] is _DONE:
                        pending.discard(item[0])
                    elif item[1] is not _STOP:
                        self._apply(self.columns[item[0]], item[1], item[2])  # type: ignore[arg-type]
                    item = self._queue.get_nowait() if not self._queue.empty() else None
                self._enforce_deadlines(tasks, pending)
                if time.perf_counter() >= next_frame and pending:
                    yield self.columns
                    next_frame = time.perf_counter() + self.frame_s
            if self._stop_requested:
                await self._cancel(tasks)
                now = time.perf_counter()
                for column in self.columns:
                    if not column.final:
                        self._finish(column, "stopped", now)
            yield self.columns
        finally:
            await self._cancel(tasks)

    @staticmethod
    async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _next_deadline(self) -> float:
        deadlines = [c.timeline.sent + c.target.timeout_s for c in self.columns
                     if not c.final and c.timeline.sent is not None]
        return min(deadlines, default=float("inf"))

    def _enforce_deadlines(self, tasks: list[asyncio.Task[None]], pending: set[int]) -> None:
        now = time.perf_counter()
        for i, column in enumerate(self.columns):
            sent = column.timeline.sent
            if not column.final and sent is not None and now - sent > column.target.timeout_s:
                tasks[i].cancel()
                pending.discard(i)
                self._fail(column, ErrorKind.TIMEOUT, f"no complete answer within {column.target.timeout_s:g} s", now)

    async def _pump(self, index: int, job: Job) -> None:
        queue = self._queue
        assert queue is not None
        try:
            backend = self._backends[index] if self._backends else make_backend(job.target)
            available = backend.availability()
            if not available.runnable:
                raise BackendError(ErrorKind.UNAVAILABLE, available.reason)
            request = job.request
            if request.images:  # text-only targets get none, and say so; the others get them fitted
                takes_images = bool(getattr(backend, "supports_vision", False))
                request, notes = await asyncio.to_thread(adapt_request, request, job.target, takes_images)
                self.columns[index].images_sent = len(request.images)
                for note in notes:
                    queue.put_nowait((index, Notice(note), time.perf_counter()))
            async with aclosing(backend.stream(request)) as events:
                async for event in events:
                    queue.put_nowait((index, event, getattr(event, "at", None) or time.perf_counter()))
        except BackendError as exc:
            queue.put_nowait((index, Failed(exc.kind, exc.message, exc.retry_after), time.perf_counter()))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken target never breaks another
            queue.put_nowait((index, Failed(ErrorKind.INTERNAL, f"{type(exc).__name__}: {exc}"), time.perf_counter()))
        finally:
            queue.put_nowait((index, _DONE, time.perf_counter()))

    def _apply(self, column: Column, event: Event, at: float) -> None:
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
            else:
                column.counted_tokens += event.tokens
        elif isinstance(event, RequestSent):
            column.timeline.sent = at
            column.status, column.detail = "streaming", "waiting for the first token"
        elif isinstance(event, Progress):
            column.status, column.detail = "loading", event.message
        elif isinstance(event, Usage):
            column.usage = event
        elif isinstance(event, ServerTimings):
            column.server = event
        elif isinstance(event, Notice):
            column.notices.append(event.message)
        elif isinstance(event, Finished):
            column.finish_reason = event.reason
            self._finish(column, "stopped" if event.reason == "stopped" else "done", at)
        elif isinstance(event, Failed):
            self._fail(column, event.kind, event.message, at)

    def _fail(self, column: Column, kind: ErrorKind, message: str, at: float) -> None:
        if kind is ErrorKind.TRUNCATED:
            tokens, source = column.token_count()
            count = f"{'~' if source == 'estimated' else ''}{tokens or 0}"
            message = f"stream cut after {count} tokens: {message}"
        column.error, column.error_kind = message, kind
        self._finish(column, "error", at)

    @staticmethod
    def _finish(column: Column, status: Status, at: float) -> None:
        column.status, column.detail = status, ""
        column.timeline.ended = at
        column.version += 1


async def run_to_end(jobs: list[Job], frame_s: float = DEFAULT_FRAME_S) -> list[Column]:
    columns: list[Column] = []
    async for columns in Run(jobs, frame_s=frame_s).frames():
        pass
    return columns
