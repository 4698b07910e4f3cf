"""The measurement loop: one event loop in a thread of its own, where every backend's I/O runs
and every network token is stamped; and a lag monitor for any event loop.

Gradio's event loop also serves pages, compresses static files, runs the queue and builds
frames; a chunk that arrives while it is busy would be stamped late. On the measurement loop
nothing else runs, so a stamp is late only by what this loop cannot avoid: waiting for the
GIL, or the machine being busy. Its ticker measures exactly that (how late each 5 ms tick
fires), and the runner reports the worst lag seen while a column ran, as its error bar.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import math
import os
import sys
import threading
import time
import traceback
import weakref
from concurrent.futures import Future
from typing import Any, Coroutine, TypeVar

from playground import settings

T = TypeVar("T")
log = logging.getLogger("playground.clock")
TICK_S = 0.005
UI_TICK_S = 0.02
HISTORY = 20_000  # late ticks kept
LATE_S = 0.001  # lags below this are the timer's own resolution, not worth storing
STALL_S = 0.100  # a loop blocked this long is a bug: logged as a warning
SWITCH_S = 0.001  # the GIL's switch interval once a measurement loop runs
NICE = -10  # a stamping thread's nice value, where real-time scheduling is refused


class LagMonitor:
    """How late a ticker on one event loop fires: the loop's lag, over time."""

    def __init__(self, name: str, tick_s: float = TICK_S, stall_s: float = STALL_S):
        self.name, self.tick_s, self.stall_s = name, tick_s, stall_s
        self._late: collections.deque[tuple[float, float]] = collections.deque(maxlen=HISTORY)
        self._count = 0  # late ticks ever recorded: a cursor for late_since()
        self._next_tick = time.perf_counter() + tick_s
        self.worst_s = 0.0  # since the monitor started
        self.active = 0  # runs in progress: enter() / leave()
        self.always = True  # False: tick only while a run is in progress (no idle wake-ups)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy: asyncio.Event | None = None

    def enter(self) -> None:
        """A run starts (from any thread): tick, and report stalls."""
        self.active += 1
        self._call(self._wake)

    def leave(self) -> None:
        self.active -= 1
        self._call(self._rest)

    def _call(self, callback: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(callback)

    def _wake(self) -> None:
        if self._busy is not None:
            self._busy.set()

    def _rest(self) -> None:
        if self._busy is not None and self.active <= 0:
            self._busy.clear()

    @property
    def watching(self) -> bool:
        """Whether a stall now would matter (and is logged): always, or while a run is in progress."""
        return self.always or self.active > 0

    async def run(self) -> None:
        if settings.stall_trace():
            threading.Thread(target=self._trace_stalls, args=(threading.get_ident(),), daemon=True).start()
        self._loop, self._busy = asyncio.get_running_loop(), asyncio.Event()
        if self.active > 0:
            self._busy.set()
        while True:
            if not self.watching:
                self._next_tick = math.inf  # nothing to measure: sleep until a run starts
                await self._busy.wait()
            self._next_tick = time.perf_counter() + self.tick_s
            await asyncio.sleep(self.tick_s)
            now = time.perf_counter()
            lag = now - self._next_tick
            if lag >= LATE_S:
                self._late.append((now, lag))
                self._count += 1
                self.worst_s = max(self.worst_s, lag)
                if lag >= self.stall_s and self.watching:
                    log.warning("%s event loop was blocked for %.0f ms", self.name, lag * 1000)

    def _trace_stalls(self, loop_thread: int) -> None:
        """Debugging aid (PLAYGROUND_STALL_TRACE=1): log every thread's stack during a stall."""
        traced = 0.0
        while True:
            time.sleep(self.stall_s / 4)
            overdue = time.perf_counter() - self._next_tick
            if overdue > self.stall_s / 2 and traced != self._next_tick and self.watching:
                traced = self._next_tick
                stacks = []
                for ident, frame in sys._current_frames().items():
                    mark = " (the loop)" if ident == loop_thread else ""
                    stacks.append(f"thread {ident}{mark}:\n" + "".join(traceback.format_stack(frame)[-8:]))
                log.warning("%s loop overdue by %.0f ms:\n%s", self.name, overdue * 1000, "\n".join(stacks))

    def start_on_running_loop(self) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self.run(), name=f"lag-monitor:{self.name}")

    def worst_lag_s(self, since: float, until: float | None = None) -> float:
        """The worst lag of any stall overlapping [since, until], including one still going on.

        A tick that fires at ``t`` with lag ``l`` means the loop could not run from ``t - l`` to ``t``.
        """
        until = time.perf_counter() if until is None else until
        worst, late = 0.0, self._late
        # newest first, stopping at the window's start: the ticks are in time order, and a copy of the
        # whole history per stream would cost the stamping loop milliseconds on a busy machine
        for i in range(1, len(late) + 1):
            try:
                at, lag = late[-i]
            except IndexError:  # the ticker's thread dropped the oldest meanwhile
                break
            if at < since:
                break
            if at - lag <= until:
                worst = max(worst, lag)
        return max(worst, self.stalled_s(until))

    def stalled_s(self, until: float) -> float:
        """How long the loop has been stalled now, if that stall began by ``until`` (not yet ticked)."""
        overdue = time.perf_counter() - self._next_tick
        return overdue if overdue > 0 and self._next_tick <= until else 0.0

    def late_cursor(self) -> int:
        return self._count

    def late_since(self, cursor: int) -> tuple[list[tuple[float, float]], int]:
        """Late ticks ``(fired_at, lag_s)`` recorded since ``cursor``, and the new cursor."""
        count, late = self._count, self._late
        new = min(count - cursor, len(late))
        return [late[-i] for i in range(new, 0, -1)], count


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (it has no Windows build), else asyncio's own loop. The stamping
    loop wakes for every chunk and every 5 ms tick; uvloop's loop machinery is C, and the
    measurement process's CPU per run of 6 x 50 tok/s fell from 0.13-0.14 to 0.11 s with it.
    Stamps are ``perf_counter`` either way (uvloop's own clock is cached per turn, in ms)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def favour_stamping(thread_id: int) -> str:
    """Ask the OS to run a stamping loop's thread first (PLAYGROUND_MEASURE_PRIORITY): real-time
    round-robin scheduling at the lowest real-time priority where allowed (CAP_SYS_NICE or
    RLIMIT_RTPRIO; not on a Hugging Face Space), else nice -10 for that thread alone (Linux: nice is
    per thread), else nothing. Returns what it got.

    Why: a stamp taken while the thread waits for a CPU is late. Under a workshop's load on 2 CPUs,
    nice -10 still left the measurement process's thread waiting on the run queue about as long as
    it ran (0.8 s in 7 s, /proc schedstat), and TTFT errors were 10-55 ms at p95 from run to run;
    with SCHED_RR they were 3-7 ms (README, bench/fanout.py). In the app, with a browser on the
    same 2 CPUs, its own measurement thread's worst lag per run of six columns fell from 3.3-3.9 ms
    to 1.1-2.8 ms. The thread only reads and stamps (half a core at 6,000 chunks a second; threads
    it starts get the normal policy back), and the kernel caps real-time threads at 95 % of a CPU,
    so it cannot take the machine."""
    wanted = settings.measure_priority()
    if wanted == "normal":
        return "normal"
    if wanted == "realtime" and hasattr(os, "sched_setscheduler"):
        try:
            os.sched_setscheduler(thread_id, os.SCHED_RR | os.SCHED_RESET_ON_FORK,
                                  os.sched_param(os.sched_get_priority_min(os.SCHED_RR)))
            return "realtime"
        except OSError:
            pass
    try:
        if os.getpriority(os.PRIO_PROCESS, thread_id) > NICE:
            os.setpriority(os.PRIO_PROCESS, thread_id, NICE)
        return "nice"
    except (OSError, AttributeError):  # not allowed (an unprivileged user), or not on this OS
        return "normal"


class MeasureLoop:
    """An event loop in a daemon thread, with a lag monitor. Started once; lives with the process."""

    def __init__(self, tick_s: float = TICK_S):
        self.loop = _new_loop()
        self.monitor = LagMonitor("measurement", tick_s)
        self.monitor.always = False  # its stalls matter only while a run streams (the runner counts them)
        # A chunk that arrives while another thread (Gradio's loop building a frame) holds the GIL is
        # stamped when this thread gets it: after at most the switch interval, 5 ms by default
        sys.setswitchinterval(SWITCH_S)
        self._thread = threading.Thread(target=self._run, name="playground-measure", daemon=True)
        self._started = threading.Event()
        self._thread.start()
        if not self._started.wait(10.0):
            raise RuntimeError("the measurement loop did not start")
        atexit.register(self.close)  # before the interpreter tears down: no stall reports from that
        self.priority = favour_stamping(self.native_id)  # what it got, for the logs

    def close(self) -> None:
        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self._wind_down(), self.loop)
            self._thread.join(2.0)

    async def _wind_down(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if "playground.backends.clients" in sys.modules:  # only if a backend ever made a client
            try:
                await asyncio.wait_for(sys.modules["playground.backends.clients"].aclose_here(), 1.0)
            except Exception:  # noqa: BLE001 - the process is leaving anyway
                pass
        self.loop.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.create_task(self.monitor.run(), name="lag-monitor:measurement")
        self.loop.run_forever()

    @property
    def native_id(self) -> int:
        """The loop thread's id for the OS (for its scheduling)."""
        assert self._thread.native_id is not None
        return self._thread.native_id

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the measurement loop and await its result from another loop."""
        return await asyncio.wrap_future(self.submit(coro))


_instance: MeasureLoop | None = None
_monitors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LagMonitor] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def measure_loop() -> MeasureLoop:
    global _instance
    with _lock:
        if _instance is None:
            _instance = MeasureLoop()
        return _instance


def shutdown() -> None:
    """Stop the measurement loop, if it runs (at exit; tests call it at the end of a session)."""
    if _instance is not None:
        _instance.close()


def monitor_this_loop(name: str) -> LagMonitor:
    """A lag monitor on the running loop (one per loop), started on first use."""
    loop = asyncio.get_running_loop()
    with _lock:
        monitor = _monitors.get(loop)
        if monitor is None:  # it only reports stalls of 100 ms and more: a coarser tick will do
            monitor = _monitors[loop] = LagMonitor(name, tick_s=UI_TICK_S)
            monitor.start_on_running_loop()
        return monitor
