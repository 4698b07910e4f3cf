"""HTTP streams read and stamped in the measurement process (the UI's under load): real events, the
child's stamps checked against the scripted server's own, one broken target alone, Stop, and a
killed process that fails only its columns and is restarted by the next run; a run that mixes a
local model (stamped in the app) with a network stream (stamped in the child)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from sse_server import Script, ScriptedServer, ServerProcess, text_of

from playground import measure_process
from playground.catalog import Target
from playground.request import ChatRequest, Message, make_params
from playground.report import result_entry
from playground.runner import Job, Run
from playground.events import TextDelta

pytestmark = pytest.mark.usefixtures("close_clients")  # the HTTP clients a test's loop made

SCRIPTS = {
    "steady": Script(tokens=30, ttft_s=0.15, interval_s=0.02),
    "long": Script(tokens=300, ttft_s=0.02, interval_s=0.02),
    "http-500": Script(status=500),
    "cut": Script(tokens=20, fault="drop", fault_after=4),
}


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(SCRIPTS) as srv:
        yield srv


@pytest.fixture(autouse=True)
def process_mode() -> Iterator[None]:
    measure_process.use(True)
    try:
        yield
    finally:
        measure_process.use(False)


def job(server: ScriptedServer | ServerProcess, model: str, name: str) -> Job:
    target = Target(id=name, label=name, backend="openai", model=model, base_url=server.base_url, timeout_s=30)
    return Job(target, ChatRequest((Message("user", f"hello {name}"),), make_params(max_tokens=1000)))


async def run(*jobs: Job) -> list:
    columns: list = []
    async for columns in Run(list(jobs)).frames():
        pass
    return columns


async def test_streams_are_stamped_in_the_child_and_match_the_server() -> None:
    # the server in a process of its own: in this one, its arrival stamps would wait on this process's
    # GIL (a CI run saw the server stamp a request 46 ms late, and so a TTFT 46 ms "too long")
    with ServerProcess(SCRIPTS) as server:
        await run(job(server, "steady", "warm"))  # starts the child (about a second)
        columns = await run(*[job(server, "steady", f"p{i}") for i in range(3)], job(server, "http-500", "broken"),
                            job(server, "cut", "cut"))
    *good, broken, cut = columns
    received = {r.body["messages"][-1]["content"]: r for r in server.received
                if r.path.endswith("/chat/completions") and r.body.get("model") == "steady"}
    for column in good:
        assert column.status == "done" and not column.shares_clock, column.error
        r = received[f"hello {column.target.id}"]
        assert r.first_token_at is not None
        m = column.metrics()
        bound = 0.03 + column.clock_lag_s
        assert m.ttft_s is not None and abs(m.ttft_s - (r.first_token_at - r.at)) < bound
        assert m.output_tokens == 30 and m.tokens_source == "server"
    assert broken.status == "error" and broken.error.startswith("500 server error")
    assert cut.status == "error" and "stream cut after ~4 tokens" in cut.error
    assert measure_process.worker().pid != os.getpid()


async def test_stop_reaches_the_child_fast(server: ScriptedServer) -> None:
    r = Run([job(server, "long", "a"), job(server, "long", "b")])
    pressed = None
    async for columns in r.frames():
        if pressed is None and all(c.chunks >= 3 for c in columns):
            pressed = time.perf_counter()
            r.stop()
    assert pressed is not None and time.perf_counter() - pressed < 1.0
    assert [c.status for c in columns] == ["stopped", "stopped"]
    assert all(3 <= c.chunks < 300 for c in columns)


async def test_a_killed_process_fails_its_columns_and_the_next_run_restarts_it(server: ScriptedServer) -> None:
    await run(job(server, "steady", "before"))
    old = measure_process.worker()
    r = Run([job(server, "long", "victim")])
    killed = False
    async for columns in r.frames():
        if not killed and columns[0].chunks >= 3:
            killed = True
            assert old.pid is not None
            os.kill(old.pid, signal.SIGKILL)
    assert columns[0].status == "error" and "exited" in columns[0].error
    [again] = await run(job(server, "steady", "after"))
    assert again.status == "done", again.error
    assert measure_process.worker().pid != old.pid


def _realtime_allowed() -> bool:
    """Whether this process may give a thread real-time scheduling (root, CAP_SYS_NICE or RLIMIT_RTPRIO)."""
    import threading

    allowed = threading.Event()

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(os.sched_get_priority_min(os.SCHED_RR)))
            allowed.set()
        except OSError:
            pass

    thread = threading.Thread(target=probe)  # a throwaway thread: its policy dies with it
    thread.start()
    thread.join()
    return allowed.is_set()


async def test_only_the_stamping_thread_of_the_child_runs_at_realtime_priority(server: ScriptedServer) -> None:
    if not _realtime_allowed():
        pytest.skip("this process may not use real-time scheduling (the child falls back to nice -10)")
    # a host name: aiohttp resolves it in a thread that the stamping thread starts
    by_name = server.base_url.replace("127.0.0.1", "localhost")
    target = Target(id="by-name", label="by-name", backend="openai", model="steady", base_url=by_name)
    [column] = await run(Job(target, ChatRequest((Message("user", "hi"),), make_params(max_tokens=64))))
    assert column.status == "done", column.error
    child = measure_process.worker()
    assert child.pid is not None
    policies = {int(tid): os.sched_getscheduler(int(tid)) & ~os.SCHED_RESET_ON_FORK
                for tid in os.listdir(f"/proc/{child.pid}/task")}
    assert len(policies) > 3  # the loop, the reader, the heartbeat, the waiters, the resolver's
    realtime = [tid for tid, policy in policies.items() if policy == os.SCHED_RR]
    assert len(realtime) == 1, policies  # the measurement loop's thread; the waiters and the heartbeat stay normal
    assert os.sched_getparam(realtime[0]).sched_priority == os.sched_get_priority_min(os.SCHED_RR)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the app itself is untouched


async def test_the_apps_own_stamping_thread_is_favoured_too_and_the_threads_it_starts_are_not() -> None:
    """At light load the app stamps HTTP streams on its own measurement loop: its thread gets the
    same real-time scheduling as the child's; the threads it starts (to_thread, local models' token
    loops) and the rest of the app do not."""
    import asyncio
    import threading

    from playground.clock import measure_loop

    if not _realtime_allowed():
        pytest.skip("this process may not use real-time scheduling")
    clock = measure_loop()
    assert clock.priority == "realtime"
    assert os.sched_getscheduler(clock.native_id) & ~os.SCHED_RESET_ON_FORK == os.SCHED_RR

    async def started_there() -> int:
        return await asyncio.to_thread(threading.get_native_id)

    assert os.sched_getscheduler(await clock.call(started_there())) == os.SCHED_OTHER
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


async def test_streams_longer_than_a_heartbeat_arrive_whole(server: ScriptedServer) -> None:
    """The child's heartbeats go through its loop's batching writes, mixed with events: a stream longer
    than one beat (1 s) must still arrive whole, and the process stay up."""
    # six streams of 300 tokens at 50/s: events every few ms, so the writes batch, beats included
    columns = await run(*(job(server, "long", f"beats-{i}") for i in range(6)))
    assert [c.status for c in columns] == ["done"] * 6, [c.error for c in columns]
    assert all(c.text == text_of(300) for c in columns)
    assert measure_process.worker().alive


async def test_the_apps_own_measurement_loop_neither_ticks_nor_forwards_for_columns_stamped_in_the_child(
        server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child stamps and brings its own error bar: in the app, its events go from the thread that
    reads them straight to the run, and the app's measurement loop keeps no 5 ms ticker for them."""
    import threading

    from playground.clock import measure_loop

    posted: dict[str, int] = {}
    real_post = Run._post

    def post(self: Run, index: int, item: object, at: float, urgent: bool) -> None:
        if isinstance(item, TextDelta):
            name = threading.current_thread().name
            posted[name] = posted.get(name, 0) + 1
        real_post(self, index, item, at, urgent)

    monkeypatch.setattr(Run, "_post", post)
    monitor = measure_loop().monitor
    watched: list[bool] = []
    async for columns in Run([job(server, "steady", "direct-a"), job(server, "steady", "direct-b")]).frames():
        watched.append(monitor.watching)
    assert [c.status for c in columns] == ["done", "done"] and all(c.text == text_of(30) for c in columns)
    assert not any(watched), "the app's measurement loop ticked for columns the child stamps"
    assert set(posted) == {"worker-reader:measurement process"} and sum(posted.values()) == 60, posted

    # a column stamped in the app (an in-process stream) still gets the ticker, and its error bar
    measure_process.use(False)
    watched.clear()
    async for columns in Run([job(server, "steady", "in-app")]).frames():
        watched.append(monitor.watching)
    assert columns[0].status == "done" and columns[0].shares_clock
    assert any(watched)


async def test_one_column_stopped_in_the_child_ends_as_stopped_while_the_other_finishes(server: ScriptedServer) -> None:
    """Stop this column, on a column the measurement process streams: its events come from the
    reader thread, so the stop must reach the child and nothing after it reach the column."""
    r = Run([job(server, "long", "stop-me"), job(server, "steady", "let-me-finish")])
    stopped_at = None
    async for columns in r.frames():
        if stopped_at is None and columns[0].chunks >= 3:
            stopped_at = columns[0].chunks
            r.stop_column(0)
    assert stopped_at is not None
    assert [c.status for c in columns] == ["stopped", "done"], [c.error for c in columns]
    assert columns[0].chunks < 300 and columns[1].text == text_of(30)
    frozen = columns[0].text
    await run(job(server, "steady", "after"))  # whatever the child still had for it arrived by now
    assert columns[0].text == frozen and columns[0].status == "stopped"


async def test_a_run_mixing_a_local_model_and_a_network_stream_stamps_each_where_it_is_made(
        bundled_gguf, builtin_catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual demo: SmolLM2 on llama.cpp beside a network target. The network column is read and
    stamped in the child and its events come from the reader thread; the local column streams on
    the app's measurement loop, whose ticker runs for it (its error bar); each ends with its text."""
    import threading

    from playground.clock import measure_loop

    pytest.importorskip("llama_cpp")
    local_target = builtin_catalog.get("smollm2-llamacpp")
    posted: dict[tuple[int, str], int] = {}
    real_post = Run._post

    def post(self: Run, index: int, item: object, at: float, urgent: bool) -> None:
        if isinstance(item, TextDelta):
            key = (index, threading.current_thread().name)
            posted[key] = posted.get(key, 0) + 1
        real_post(self, index, item, at, urgent)

    monkeypatch.setattr(Run, "_post", post)
    monitor = measure_loop().monitor
    watched: list[bool] = []
    local_job = Job(local_target, ChatRequest((Message("user", "Name three colours."),),
                                              make_params(temperature=0.0, max_tokens=12)))
    with ServerProcess(SCRIPTS) as server:
        await run(job(server, "steady", "warm"))  # starts the child
        posted.clear()
        async for columns in Run([job(server, "steady", "network"), local_job]).frames():
            watched.append(monitor.watching)
    # the server's own log: read once it has stopped
    received = next(r for r in server.received if r.path.endswith("/chat/completions")
                    and r.body["messages"][-1]["content"] == "hello network")
    network, local_column = columns
    assert network.status == "done" and network.text == text_of(30), network.error
    assert not network.shares_clock
    ttft = network.metrics().ttft_s
    assert ttft is not None and received.first_token_at is not None
    assert abs(ttft - (received.first_token_at - received.at)) < 0.03 + network.clock_lag_s
    assert local_column.status == "done" and local_column.text.strip(), local_column.error
    assert local_column.shares_clock and local_column.metrics().output_tokens
    assert any(watched), "the app's ticker did not run for the column stamped in the app"
    threads = {index: {name for (i, name) in posted if i == index} for index in (0, 1)}
    assert threads[0] == {"worker-reader:measurement process"}, threads
    assert "worker-reader:measurement process" not in threads[1], threads


async def test_auto_stamps_on_the_apps_thread_until_the_streams_in_flight_call_for_the_child(
        server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The UI's mode: a run whose HTTP streams, with those already in flight, are few is read on the
    app's own measurement thread (no second process's CPU); beyond ``THREAD_STREAMS`` the child
    takes it, stamped as well. Runs that start together count each other; a finished or dropped
    run counts no more."""
    import gc
    import math

    measure_process.use("auto")
    monkeypatch.setattr(measure_process, "THREAD_LAG_S", math.inf)  # the count alone decides here
    gc.collect()
    monkeypatch.setattr(measure_process, "_in_flight", type(measure_process._in_flight)())  # no other test's runs
    columns = await run(job(server, "steady", "alone-a"), job(server, "steady", "alone-b"))
    assert [c.status for c in columns] == ["done", "done"] and all(c.shares_clock for c in columns)
    assert [result_entry(c)["stamped_in"] for c in columns] == ["app", "app"]  # the downloads say where
    assert measure_process.in_flight() == 0

    others = type("OtherRun", (), {})()  # another session's run, streaming 11 targets
    measure_process.choose(others, [job(server, "steady", f"o{i}").target for i in range(11)])
    try:
        columns = await run(job(server, "steady", "busy-a"), job(server, "steady", "busy-b"))
    finally:
        measure_process.release(others)
    assert [c.status for c in columns] == ["done", "done"]
    assert [result_entry(c)["stamped_in"] for c in columns] == ["measurement process"] * 2
    assert all(c.text == text_of(30) and c.metrics().ttft_s for c in columns)

    # sessions that start at once: the third sees the first two's twelve streams, before any streams
    first, second = (Run([job(server, "steady", f"{who}{i}") for i in range(6)]) for who in "ab")
    third = Run([job(server, "steady", "c0")])
    assert first._remote == [False] * 6 and second._remote == [False] * 6 and third._remote == [True]
    assert measure_process.in_flight() == 13
    del first, second, third  # never run: nothing holds their count
    gc.collect()
    assert measure_process.in_flight() == 0


async def test_a_benchmark_keeps_each_column_in_one_place_for_all_its_runs(
        server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Benchmark mode: samples of one column are all stamped in one place, chosen once (here the child,
    other sessions being busy), even when the load falls meanwhile; its count ends with it."""
    import gc
    import math

    from playground.repeats import RepeatedRun

    measure_process.use("auto")
    monkeypatch.setattr(measure_process, "THREAD_LAG_S", math.inf)
    gc.collect()
    monkeypatch.setattr(measure_process, "_in_flight", type(measure_process._in_flight)())
    others = type("OtherRun", (), {})()
    measure_process.choose(others, [job(server, "steady", f"o{i}").target for i in range(12)])
    bench = RepeatedRun([job(server, "steady", "bench-a")], repeat=3, warmup=0, fair=False)
    measure_process.release(others)  # the load falls before the benchmark's runs start
    places = []
    async for columns in bench.frames():
        if columns[0].timeline.sent is not None:  # one of its runs (not the placeholder before the first)
            places.append(columns[0].stamped_in)
    assert [len(s) for s in bench.samples] == [3] and all(s.status == "done" for s in bench.samples[0])
    assert set(places) == {"measurement process"}
    assert measure_process.in_flight() == 0


async def test_auto_sends_runs_to_the_child_after_the_apps_thread_ran_late(
        server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stamp on the app's thread is as late as that thread: once it has run late (the machine or
    the app busy), the next runs go to the child until a quiet spell has passed."""
    import asyncio

    from playground.clock import measure_loop

    async def hold_the_loop(seconds: float) -> None:
        time.sleep(seconds)  # a stall of the stamping loop, as a busy GIL would make it

    measure_process.use("auto")
    clock = measure_loop()
    clock.monitor.enter()  # it ticks while something is stamped there
    try:
        await asyncio.sleep(0.02)
        await clock.call(hold_the_loop(0.03))
        await asyncio.sleep(0.02)  # the late tick fires
    finally:
        clock.monitor.leave()
    columns = await run(job(server, "steady", "after-a-stall"))
    assert columns[0].status == "done" and not columns[0].shares_clock

    monkeypatch.setattr(measure_process, "LAG_WINDOW_S", 0.0)  # the stall is long past
    columns = await run(job(server, "steady", "quiet-again"))
    assert columns[0].status == "done" and columns[0].shares_clock
