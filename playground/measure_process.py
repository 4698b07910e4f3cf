"""HTTP streams read and stamped in a process of their own: the measurement process.

The measurement loop (``playground.clock``) keeps stamps off Gradio's event loop, but a thread
still shares the app's GIL: with 30 sessions streaming, Gradio's frames and the SDKs' chunk
parsing (about 0.13 ms of Python per chunk) need more than one core of Python, and a stamp
waits its turn. Here the OpenAI-compatible and Ollama streams run on a measurement loop in a
child process with its own GIL; each event is stamped there as it arrives (``perf_counter`` is
one clock across processes) and crosses to the app with its stamp, so the app's own load can
delay the frames but not the numbers. At the end of each stream the child reports the worst lag
of its loop meanwhile (a ``ClockReport``): the column's error bar.

The child is ``worker_process``'s, shared by every session. It costs CPU: each event is pickled,
written, read and unpickled once more, and the child runs a loop and a ticker of its own (in
``bench/browser_stream.py``, 0.07-0.11 s of a run of six columns at 50 tok/s whose whole app took
0.14-0.18 s without it). So the UI uses it by load ("auto"): a run whose HTTP streams, with those
already in flight in this app, are at most ``THREAD_STREAMS`` (two people's six columns) is stamped
on the app's measurement thread, which keeps time at that load (``bench/fanout.py``); beyond, or
once that thread has run late lately, runs go to the child. A run stays where it started; each
column's error bar comes from the loop that stamped it. The command line keeps the thread (nothing
else competes there). PLAYGROUND_MEASURE_PROCESS=1 (always the child), 0 (never) or auto overrides either.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import threading
import time
import weakref
from contextlib import aclosing
from typing import TYPE_CHECKING, Callable, Literal

from playground import secrets, settings
from playground.backends import http_backends, local, make_backend
from playground.clock import NICE, measure_loop
from playground.errors import BackendError
from playground.events import ClockReport, Event, RequestSent

if TYPE_CHECKING:
    from playground.backends.local import Emit
    from playground.backends.worker_process import Generate, WorkerProcess
    from playground.catalog import Target
    from playground.request import ChatRequest

START_TIMEOUT_S = 60.0
priority = "normal"  # in the child: what clock.favour_stamping got for its stamping thread

log = logging.getLogger("playground.measure_process")
Mode = Literal["thread", "process", "auto"]
THREAD_STREAMS = 12  # auto: HTTP streams in flight in this app, a new run's included, still stamped on the thread
THREAD_LAG_S = 0.005  # auto: the thread's worst lag over the last LAG_WINDOW_S beyond which runs go to the child
LAG_WINDOW_S = 10.0

_mode: Mode | None = None
_worker: WorkerProcess | None = None
_lock = threading.Lock()  # the child's start: held for seconds
_in_flight: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()  # run -> its HTTP streams
_count_lock = threading.Lock()  # never held for more than a count (runs are made on Gradio's loop)


def use(default: Mode | bool) -> None:
    """Where this app stamps HTTP streams: "process" (True), "thread" (False) or "auto" (by load);
    PLAYGROUND_MEASURE_PROCESS wins."""
    global _mode
    chosen = settings.measure_process()
    _mode = chosen if chosen is not None else ("process" if default is True else "thread" if default is False
                                                else default)  # type: ignore[assignment]


def mode() -> Mode:
    if _mode is None:
        use(False)
    assert _mode is not None
    return _mode


def enabled() -> bool:
    """Whether this app may stamp in the child (and starts it at warm-up)."""
    return mode() != "thread"


def takes(target: Target) -> bool:
    """Whether the child may read ``target``: network streams only (a local model stamps its tokens
    where they are made)."""
    return enabled() and target.backend in http_backends()


def choose(owner: object, targets: list[Target]) -> list[bool]:
    """For a new run (``owner``, weakly referenced): which of its columns the child reads and stamps.
    Its HTTP streams count as in flight until ``release(owner)`` (or until the run is gone), so that
    sessions that start together see each other."""
    chosen = mode()
    if chosen == "thread":
        return [False] * len(targets)
    http = [takes(target) for target in targets]
    lagging = chosen == "auto" and _thread_lag_s() > THREAD_LAG_S
    with _count_lock:
        flying = sum(_in_flight.values())
        busy = chosen == "process" or lagging or flying + sum(http) > THREAD_STREAMS
        if any(http):
            _in_flight[owner] = sum(http)
    if any(http) and chosen == "auto":
        log.info("a run of %d HTTP streams (%d in flight) is stamped %s%s", sum(http), flying,
                 "in the measurement process" if busy else "on the app's thread",
                 " (that thread ran late lately)" if lagging else "")
    return [h and busy for h in http]


def release(owner: object) -> None:
    with _count_lock:
        _in_flight.pop(owner, None)


def in_flight() -> int:
    with _count_lock:
        return sum(_in_flight.values())


def _thread_lag_s() -> float:
    """How late the app's own measurement loop ran lately (it ticks only while it stamps a run)."""
    monitor = measure_loop().monitor
    return monitor.worst_lag_s(time.perf_counter() - LAG_WINDOW_S)


def worker() -> WorkerProcess:
    """The shared child, started on first use (blocking: call it from a thread)."""
    from playground.backends.worker_process import WorkerProcess

    global _worker
    with _lock:
        if _worker is None or not _worker.alive:
            if _worker is not None:
                _worker.close()
            _worker = WorkerProcess("measurement process", "playground.measure_process:child_streams", (),
                                    keeps_keys=True, ends_stuck_stops=False)
            try:
                _worker.start(timeout_s=START_TIMEOUT_S)
            except BaseException:
                _worker = None
                raise
        return _worker


async def deliver(target: Target, request: ChatRequest, sink: Callable[[Event], None]) -> None:
    """Stream ``target`` in the child: each event, with the child's stamp, is handed to ``sink`` by the
    thread that reads the child's messages, as it comes; returns when the stream ends. Forwarding
    the events through this process's measurement loop instead cost that loop a wake-up and two
    generators per event (0.06 s of CPU per run of six columns at 50 tok/s) for nothing: the
    stamps are already taken."""
    child = await asyncio.to_thread(worker)

    def work(emit: Emit, stop: threading.Event) -> None:
        child.generate(target, request, emit, stop)

    await local.deliver_from_thread(work, sink)


# --- the child -----------------------------------------------------------------------------
def child_streams() -> Generate:
    """In the child: warm the SDKs, start a measurement loop, and return the ``generate`` that
    ``worker_process`` runs per request (in a thread of its own, which only waits)."""
    from playground import warmup

    _raise_priority()
    secrets.redact_logs()  # its log lines reach the app's stderr directly
    warmup.warm_sdks()
    loop = measure_loop()  # its thread is favoured as it starts (clock.favour_stamping)
    global priority
    priority = loop.priority
    # as in the app (warmup._warm): what the imports and the warm-up left lives as long as this
    # process; out of the collector's walks, the first full collection is not a 50 ms pause of
    # the stamping loop (and of its CPU) in the middle of some run
    gc.freeze()

    def generate(target: Target, request: ChatRequest, emit: Emit, stop: threading.Event) -> None:
        future = loop.submit(_pump(target, request, emit))
        woken = threading.Event()  # the stream ended, or Stop: no polling (120 streams would mean 24,000 wake-ups a second)
        future.add_done_callback(lambda _: woken.set())
        if isinstance(stop, local.StopFlag):
            stop.wake_on_set(woken)
        while not future.done():
            woken.wait(0.25)
            if stop.is_set():
                future.cancel()
                break
        try:
            future.result(timeout=10)
        except BackendError:
            raise
        except BaseException as exc:  # noqa: BLE001 - cancelled by stop, or a bug: both end the column
            if not stop.is_set():
                raise BackendError.wrap(exc) from None

    generate.send_loop = loop.loop  # type: ignore[attr-defined]  # its messages are written there: see worker_process._serve
    return generate


def _raise_priority() -> None:
    """Ask the scheduler to run this process first when the CPUs are busy: its only work is to read
    and stamp, and a stamp taken while it waits for a CPU is late. Needs CAP_SYS_NICE (root in a
    container); without it the process keeps the app's priority, and its lag says how late it got.
    Threads started after this inherit it."""
    if settings.measure_priority() == "normal":
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
    except OSError:
        pass


async def _pump(target: Target, request: ChatRequest, emit: Emit) -> None:
    monitor = measure_loop().monitor
    backend = make_backend(target)
    for key in request.credentials.secrets() if request.credentials else ():
        secrets.remember(key)  # a visitor's key is redacted here too
    sent: float | None = None
    monitor.enter()
    try:
        async with aclosing(backend.stream(request)) as events:  # an emit that raises ends the stream too
            async for event in events:
                now = time.perf_counter()
                if hasattr(event, "at") and getattr(event, "at") is None:
                    event = dataclasses.replace(event, at=now)  # type: ignore[type-var]
                if isinstance(event, RequestSent) and sent is None:  # a second one corrects the clock's start
                    sent = now
                emit(event)
    finally:
        monitor.leave()
        if sent is not None:
            emit(ClockReport(monitor.worst_lag_s(sent)))
