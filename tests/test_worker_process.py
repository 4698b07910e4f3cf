"""The model process plumbing (``worker_process``) with stand-in models: loads, events, stop,
errors, death, and the child leaving with its parent. The real ONNX model in its process is
tested in ``test_local_backends``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from playground.errors import BackendError
from playground.backends.worker_process import WorkerProcess
from playground.catalog import Target
from playground.events import ErrorKind, Event, Finished, TextDelta
from playground.request import ChatRequest, build_messages, make_params

TARGET = Target(id="fake", label="fake", backend="onnx", model="fake", source="path")
FAKES = "model_process_fakes"
TESTS = str(Path(__file__).resolve().parent)


@pytest.fixture
def child_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the child import the stand-in factories from tests/."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p))


@pytest.fixture
def counter(child_path: None) -> Iterator[WorkerProcess]:
    worker = WorkerProcess("counter", f"{FAKES}:counter", (20,)).start(timeout_s=60)
    yield worker
    worker.close()


def request(text: str = "count", tokens: int = 5) -> ChatRequest:
    return ChatRequest(build_messages(text), make_params(max_tokens=tokens))


def generate(worker: WorkerProcess, req: ChatRequest, stop: threading.Event | None = None
             ) -> tuple[list[Event], BackendError | None]:
    events: list[Event] = []
    try:
        worker.generate(TARGET, req, events.append, stop or threading.Event())
    except BackendError as exc:
        return events, exc
    return events, None


def test_events_cross_in_order_with_the_childs_clock(counter: WorkerProcess) -> None:
    assert counter.alive and counter.pid != os.getpid()
    before = time.perf_counter()
    events, error = generate(counter, request(tokens=5))
    after = time.perf_counter()
    assert error is None
    texts = [e.text for e in events if isinstance(e, TextDelta)]
    assert texts == ["0 ", "1 ", "2 ", "3 ", "4 "]
    stamps = [e.at for e in events if isinstance(e, TextDelta)]
    assert stamps == sorted(stamps) and before < stamps[0] and stamps[-1] < after  # one clock
    assert isinstance(events[-1], Finished) and events[-1].reason == "length"


def test_concurrent_requests_share_the_process_and_do_not_mix(counter: WorkerProcess) -> None:
    results: dict[int, list[Event]] = {}

    def one(i: int) -> None:
        results[i] = generate(counter, request(tokens=3 + i))[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    stamps = []
    for i in range(3):
        deltas = [e for e in results[i] if isinstance(e, TextDelta)]
        assert [e.text for e in deltas] == [f"{n} " for n in range(3 + i)]
        stamps.append((deltas[0].at, deltas[-1].at))
    # every answer had begun before any had ended: they ran side by side, not one after another
    assert max(first for first, _ in stamps) < min(last for _, last in stamps), stamps


def test_stop_reaches_the_child_within_a_token(counter: WorkerProcess) -> None:
    stop = threading.Event()
    events: list[Event] = []
    stopped_at: list[float] = []

    def emit(event: Event) -> None:
        events.append(event)
        if sum(isinstance(e, TextDelta) for e in events) == 3 and not stop.is_set():
            stopped_at.append(time.perf_counter())
            stop.set()

    counter.generate(TARGET, request(tokens=500), emit, stop)
    late = [e for e in events if isinstance(e, TextDelta) and e.at > stopped_at[0]]
    assert len(late) <= 1, f"{len(late)} tokens were made after the stop"
    assert isinstance(events[-1], Finished) and events[-1].reason == "stopped"
    assert generate(counter, request(tokens=2))[1] is None  # the process serves the next request


def test_an_error_in_generation_is_reported_and_the_process_lives_on(counter: WorkerProcess) -> None:
    events, error = generate(counter, request("boom", tokens=10))
    assert error is not None and error.kind is ErrorKind.INTERNAL
    assert error.message == "RuntimeError: the model broke at token 3"
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["0 ", "1 "]
    assert counter.alive and generate(counter, request(tokens=2))[1] is None


def test_close_lets_the_child_leave_on_its_own(counter: WorkerProcess) -> None:
    counter.close()
    assert counter.exit_code == 0, "the model process had to be killed"
    assert not counter.alive


def test_a_load_error_keeps_its_kind_and_message(child_path: None) -> None:
    with pytest.raises(BackendError) as caught:
        WorkerProcess("missing", f"{FAKES}:missing_model", ("/nowhere",)).start(timeout_s=60)
    assert caught.value.kind is ErrorKind.NOT_FOUND and caught.value.message == "no model at /nowhere"


def test_a_child_that_dies_while_loading_says_so(child_path: None) -> None:
    with pytest.raises(BackendError, match=r"model process exited \(code 3\) while loading"):
        WorkerProcess("dies", f"{FAKES}:dies_while_loading", ()).start(timeout_s=60)


def test_a_child_killed_mid_answer_fails_that_request_and_refuses_more(counter: WorkerProcess) -> None:
    def kill_at_two(event: Event) -> None:
        seen.append(event)
        if sum(isinstance(e, TextDelta) for e in seen) == 2:
            os.kill(counter.pid, 9)

    seen: list[Event] = []
    with pytest.raises(BackendError, match=r"model process exited \(code -9\)"):
        counter.generate(TARGET, request(tokens=500), kill_at_two, threading.Event())
    assert not counter.alive
    with pytest.raises(BackendError, match="model process exited"):
        counter.generate(TARGET, request(tokens=2), lambda e: None, threading.Event())


PARENT = """
import sys, time
sys.path[:0] = [{tests!r}]
from playground.backends.worker_process import WorkerProcess
w = WorkerProcess("counter", "model_process_fakes:counter", (20,)).start(timeout_s=60)
print(w.pid, flush=True)
time.sleep(120)
"""


def test_the_child_leaves_when_its_parent_dies(child_path: None) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(tests=TESTS)], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        child = int(parent.stdout.readline())
        assert _running(child)
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _running(child), "the model process outlived the app"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; its reaper (the dead parent's init) collects it


def test_an_unreadable_message_fails_the_request_and_the_process_loudly(child_path: None,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    worker = WorkerProcess("unreadable", f"{FAKES}:unreadable", ()).start(timeout_s=60)
    try:
        started = time.monotonic()
        with pytest.raises(BackendError, match="its messages could not be read \\(RuntimeError: this message cannot"):
            worker.generate(TARGET, ChatRequest(build_messages("hi"), make_params()), lambda e: None, threading.Event())
        assert time.monotonic() - started < 4  # not after the child's 5 s
        assert not worker.alive
        assert "its messages could not be read" in caplog.text
    finally:
        worker.close()


def test_a_wait_for_a_busy_model_shows_its_seconds_and_gives_up_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    from playground.backends import local
    from playground.events import Progress

    monkeypatch.setenv("PLAYGROUND_QUEUE_TIMEOUT_S", "3")
    busy = threading.Lock()
    busy.acquire()
    now = [0.0]

    def clock() -> float:
        now[0] += 0.25
        return now[0]

    shown: list[str] = []
    with pytest.raises(BackendError, match=r"^waiting: busy: gave up after 3 s \(PLAYGROUND_QUEUE_TIMEOUT_S\)$") as info:
        local.wait_to_acquire(busy, threading.Event(), lambda e: shown.append(e.message) if isinstance(e, Progress) else None,
                              "waiting: busy", clock=clock)
    assert info.value.kind is ErrorKind.TIMEOUT
    assert shown[:3] == ["waiting: busy", "waiting: busy (1 s)", "waiting: busy (2 s)"]


def test_a_hung_model_process_is_found_by_its_silence_and_replaced(child_path: None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAYGROUND_MODEL_HANG_S", "3")
    worker = WorkerProcess("stuck", f"{FAKES}:hangs_holding_the_gil", ()).start(timeout_s=60)
    try:
        started = time.monotonic()
        with pytest.raises(BackendError, match=r"stopped answering for 3 s \(hung\); the next run starts a fresh one"):
            worker.generate(TARGET, ChatRequest(build_messages("hi"), make_params()), lambda e: None, threading.Event())
        assert 3 <= time.monotonic() - started < 15  # its silence, not the 30 s call
        assert not worker.alive
        deadline = time.monotonic() + 10
        while worker.exit_code is None and time.monotonic() < deadline:  # the kill lands (bounded)
            time.sleep(0.05)
        assert worker.exit_code is not None  # killed, not left running
    finally:
        worker.close()


def test_a_quiet_but_healthy_model_process_is_not_taken_for_hung(counter: WorkerProcess,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAYGROUND_MODEL_HANG_S", "2")
    time.sleep(3)  # an idle spell longer than the limit: its heartbeat keeps it alive
    got: list[Event] = []
    counter.generate(TARGET, ChatRequest(build_messages("count"), make_params(max_tokens=3)), got.append, threading.Event())
    assert counter.alive and isinstance(got[-1], Finished)


def test_close_from_two_threads_at_once_closes_the_channel_once(child_path: None) -> None:
    """The reader closes on an unreadable message while the owner closes too: the second close
    must not close the descriptor again (EBADF, or worse, a file that reused its number)."""
    for _ in range(3):
        worker = WorkerProcess("counter", f"{FAKES}:counter", (5,)).start(timeout_s=60)
        gate = threading.Barrier(2)
        failures: list[BaseException] = []

        def close() -> None:
            gate.wait(timeout=10)
            try:
                worker.close()
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                failures.append(exc)

        threads = [threading.Thread(target=close) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not failures and not worker.alive


def test_a_stop_the_model_cannot_hear_ends_its_process_and_the_next_run_gets_a_fresh_one(
        child_path: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from playground.backends import worker_process

    monkeypatch.setattr(worker_process, "STOP_GRACE_S", 0.5)
    deaf = WorkerProcess("deaf", f"{FAKES}:deaf_while_reading_the_prompt", ()).start(timeout_s=60)
    try:
        stop = threading.Event()
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        events, error = generate(deaf, request("a long image prompt", tokens=5), stop)
        took = time.monotonic() - started
        assert error is None and took < 5, (error, took)  # stopped, not after the 60 s call
        assert not deaf.alive and "could not interrupt" in (deaf._dead or "")
        deadline = time.monotonic() + 10
        while deaf.exit_code is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert deaf.exit_code is not None  # the process is gone, and its call with it
    finally:
        deaf.close()
    fresh = WorkerProcess("deaf", f"{FAKES}:deaf_while_reading_the_prompt", ()).start(timeout_s=60)
    try:
        events, error = generate(fresh, request("short", tokens=3))
        assert error is None and [e.text for e in events if isinstance(e, TextDelta)] == ["0 ", "1 ", "2 "]
    finally:
        fresh.close()


def test_a_stop_waits_for_the_call_while_another_request_shares_the_process(
        child_path: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from playground.backends import worker_process

    monkeypatch.setattr(worker_process, "STOP_GRACE_S", 0.3)
    deaf = WorkerProcess("deaf", f"{FAKES}:deaf_while_reading_the_prompt", ()).start(timeout_s=60)
    try:
        other: list[Any] = []
        neighbour = threading.Thread(target=lambda: other.append(generate(deaf, request("short", tokens=150))))
        neighbour.start()  # 150 tokens at 10 ms: still going when the stuck one is stopped
        stop = threading.Event()
        stuck = threading.Thread(target=generate, args=(deaf, request("long", tokens=5), stop), daemon=True)
        stuck.start()
        deadline = time.monotonic() + 10
        while len(deaf._pending) < 2 and time.monotonic() < deadline:  # both requests in the process
            time.sleep(0.01)
        assert len(deaf._pending) == 2
        stop.set()
        neighbour.join(timeout=30)
        # not ended while someone else's answer was on it: that one streams to its end
        assert other and other[0][1] is None and len([e for e in other[0][0] if isinstance(e, TextDelta)]) == 150
        stuck.join(timeout=10)
        assert not stuck.is_alive() and not deaf.alive  # alone then, the stuck one ends the process
    finally:
        deaf.close()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])  # the child runs uvloop's where installed
def test_the_loop_sender_never_blocks_its_loop_and_keeps_order(monkeypatch: pytest.MonkeyPatch, loop_kind: str) -> None:
    """The measurement loop writes its own messages: with a parent that reads nothing for a while the
    socket fills, and the loop must keep running (its stamps would be late otherwise); once the
    parent reads, every message arrives, whole and in order, in ``Connection.recv``'s framing."""
    import asyncio
    import socket
    from multiprocessing.connection import Connection

    from playground.backends import worker_process
    from playground.backends.worker_process import _LoopSender

    monkeypatch.setattr(worker_process, "LINGER_S", 0.0)  # every message is written on the next turn of the loop
    ours, theirs = socket.socketpair()
    parent, child = Connection(os.dup(ours.fileno())), Connection(os.dup(theirs.fileno()))
    ours.close()
    theirs.close()
    loop = asyncio.new_event_loop() if loop_kind == "asyncio" else pytest.importorskip("uvloop").new_event_loop()
    sender = _LoopSender(child, loop)
    big = "x" * 100_000
    count = 200  # 20 MB: far more than a socket pair's buffer

    async def flood() -> int:
        for i in range(count):
            sender.send(("event", 1, (i, big)))
            await asyncio.sleep(0)  # its write is tried (the socket takes what it can), and the loop runs on
        return len(sender._out)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        waiting = asyncio.run_coroutine_threadsafe(flood(), loop).result(timeout=30)  # never blocked on it
        assert waiting > 0  # the socket was full: the rest waits for the parent to read
        sender.send(("done", 1, None))  # from another thread: handed to the loop, after the events
        got: list[tuple[object, ...]] = []
        while not got or got[-1][0] != "done":
            assert parent.poll(30)
            message = parent.recv()
            got.extend(message[1] if message[0] == "batch" else [message])
        events = [m for m in got if m[0] == "event"]
        assert [m[2][0] for m in events] == list(range(count)) and all(m[2][1] == big for m in events)
        assert got[-1] == ("done", 1, None)
    finally:
        parent.close()  # a write still blocked (a bug) fails now
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        child.close()
