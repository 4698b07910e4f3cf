"""A recorded run played back into columns at its recorded pace (1×, 2×, 4×, or at once).

No model, key or network: each column's text events are released at the request's moment plus
their recorded offset (divided by the speed), and are stamped with the recorded offsets, so the
figures computed from them (TTFT, decode, ITL, E2E: ``metrics``, as for a live run) are the
recorded ones; at 1× they also tick as they did. The same interface as ``runner.Run``.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import threading
import time
from typing import Any, AsyncIterator

from playground import metrics
from playground.catalog import Target
from playground.errors import ErrorKind
from playground.events import ServerTimings, Usage
from playground.runner import DEFAULT_FRAME_S, STAMPED_IN, TICK_S, Column

SPEEDS = {"1×": 1.0, "2×": 2.0, "4×": 4.0, "instant": None}


def display_target(result: dict[str, Any]) -> Target:
    """The recorded target, for display only (never run): not checked against a catalog."""
    return Target.model_construct(id=str(result.get("id", "?")), label=str(result.get("label") or result.get("id")),
                                  backend=str(result.get("backend", "?")), model=str(result.get("model") or "?"))


def when(document: dict[str, Any]) -> str:
    at = document.get("recorded_at")
    try:
        return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return "an unknown date"


_COUNTS = {"output_tokens", "prompt_tokens", "threads"}


def _figure(name: str, value: Any) -> bool:
    """A figure of ``ServerTimings`` as the playground writes it (a file from elsewhere is untrusted)."""
    if name not in ServerTimings.__dataclass_fields__ or type(value) not in (int, float) or value < 0:
        return False
    return type(value) is int if name in _COUNTS else math.isfinite(value)


class Replay:
    def __init__(self, document: dict[str, Any], speed: float | None, frame_s: float = DEFAULT_FRAME_S):
        self.document, self.speed, self.frame_s = document, speed, frame_s
        started = time.perf_counter()
        self.results = document["results"]
        self.columns = [Column(display_target(r), metrics.Timeline(started=started), detail="replay")
                        for r in self.results]
        pace = "at once" if speed is None else f"{speed:g}×"
        self.phase = [f"replay of {when(document)}, {pace}"] * len(self.columns)
        self._stopped: set[int] = set()
        self._stop_all = threading.Event()
        self._start: float | None = None

    def stop(self) -> None:
        self._stop_all.set()

    def stop_column(self, index: int) -> None:
        self._stopped.add(index)

    def now(self) -> float:
        """The replay's clock: the recorded run's time, which runs ``speed`` times faster than the
        wall's (its live figures tick as they did when it was recorded)."""
        real = time.perf_counter()
        if self.speed is None or self._start is None:
            return real
        return self._start + (real - self._start) * self.speed

    def _due(self, start: float, offset: float) -> float:
        return start if self.speed is None else start + offset / self.speed

    async def frames(self) -> AsyncIterator[list[Column]]:
        start = self._start = time.perf_counter()
        steps: list[tuple[float, int, int]] = []  # (when due, column, event index; the count: the end)
        for i, (column, timeline) in enumerate(zip(self.columns, self.document["timelines"])):
            column.timeline.sent = start  # the recorded offsets count from the request
            column.status, column.detail = "streaming", ""
            notices = self.results[i].get("notices")  # what the column said (images not sent, ...): checked
            column.notices = [n for n in notices if isinstance(n, str)] if isinstance(notices, list) else []
            steps += [(self._due(start, event[0]), i, n) for n, event in enumerate(timeline["events"])]
            end = timeline.get("ended")
            last = timeline["events"][-1][0] if timeline["events"] else 0.0
            steps.append((self._due(start, max(end, last) if isinstance(end, (int, float)) else last), i,
                          len(timeline["events"])))
        steps.sort()
        shown = [0] * len(self.columns)  # characters shown per column
        for step, (due, i, n) in enumerate(steps):
            while not self._stop_all.is_set() and (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(min(wait, self.frame_s))  # a Stop is seen within a frame
                if self._stop_columns_now():
                    yield self.columns
            if self._stop_all.is_set():
                break
            self._apply(i, n, start, shown)
            if step + 1 == len(steps) or steps[step + 1][0] > time.perf_counter():
                yield self.columns  # everything due by now, at once (the page paces its frames)
        now = self.now()
        for i, column in enumerate(self.columns):
            if not column.final:
                self._finish(column, i, "stopped", now)
        yield self.columns

    def _stop_columns_now(self) -> bool:
        """Columns stopped on their own end now, not at their next recorded event; True if any did."""
        stopped = [i for i in list(self._stopped) if not self.columns[i].final]
        for i in stopped:
            self._finish(self.columns[i], i, "stopped", self.now())
        return bool(stopped)

    def _apply(self, i: int, n: int, start: float, shown: list[int]) -> None:
        column = self.columns[i]
        if column.final:
            return
        if i in self._stopped:
            self._finish(column, i, "stopped", self.now())
            return
        timeline = self.document["timelines"][i]
        if n == len(timeline["events"]):
            self._finish(column, i, timeline.get("status") or "done", None)
            return
        offset, chars, tokens = timeline["events"][n]
        text = self.results[i]["text"][shown[i]:shown[i] + chars]
        shown[i] += chars
        column.text += text
        column.timeline.deltas.append(metrics.Delta(start + offset, len(text), tokens))
        if tokens is None:
            column.exact_counts, column.chunks = False, column.chunks + 1
        else:
            column.counted_tokens += tokens
        column.version += 1

    def _finish(self, column: Column, index: int, status: str, at: float | None) -> None:
        """The column ends as recorded (``at`` None: at its recorded end), or stopped now."""
        result, timeline = self.results[index], self.document["timelines"][index]
        sent = column.timeline.sent or 0.0
        end = timeline.get("ended")
        last = column.timeline.deltas[-1].at if column.timeline.deltas else sent
        # stopped part-way: not before what it already showed (stamped at recorded offsets, which run
        # ahead of the clock at 2× and 4×)
        column.timeline.ended = max(at, last) if at is not None else sent + (end if isinstance(end, (int, float)) else 0.0)
        column.status = status if status in ("done", "stopped", "error") else "done"  # type: ignore[assignment]
        column.detail = ""
        column.finish_reason = timeline.get("finish_reason")
        if column.status == "error":
            column.error = str(result.get("error") or "error")
            column.error_kind = ErrorKind.INTERNAL
        tokens, source = result.get("output_tokens"), result.get("tokens_source")
        if at is None and isinstance(tokens, int) and source in ("server", "counted"):
            counts = [result.get("prompt_tokens"), result.get("cached_prompt_tokens")]  # an imported file: checked
            prompt, cached = (n if type(n) is int and n >= 0 else None for n in counts)
            column.usage = Usage(prompt, tokens, source, cached)
        bound = result.get("clock_lag_ms")  # the recorded error bar, the ticker's period included
        if type(bound) in (int, float) and math.isfinite(bound) and bound >= 0:
            column.clock_lag_s = max(0.0, bound / 1000 - TICK_S)
        # a recording from before the field existed: not knowable (the UI then stamped HTTP in the child)
        column.stamped_in = result["stamped_in"] if result.get("stamped_in") in STAMPED_IN else "unknown"
        server = result.get("server")
        if isinstance(server, dict):
            column.server = ServerTimings(**{k: v for k, v in server.items() if _figure(k, v)})
        column.version += 1
