"""The runner (fan-out, pacing, deadlines, stop) against the scripted loopback server."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sse_server import Script, ScriptedServer, text_of

from playground.catalog import Target
from playground.events import ErrorKind
from playground.request import ChatRequest, Message, make_params
from playground.clock import measure_loop
from playground.runner import Column, Job, Run

pytestmark = pytest.mark.usefixtures("close_clients")  # the HTTP clients a test's loop made

SCRIPTS = {
    "half-second": Script(tokens=7, ttft_s=0.2, interval_s=0.05),  # ~0.5 s each
    "fast": Script(tokens=5, ttft_s=0.02, interval_s=0.01),
    "slow": Script(tokens=5, ttft_s=1.2, interval_s=0.01),
    "long": Script(tokens=100, ttft_s=0.05, interval_s=0.02),  # ~2 s
    "trickle": Script(tokens=60, ttft_s=0.0, interval_s=0.05),  # ~3 s of tokens, steady
    "flood": Script(tokens=500, ttft_s=0.0, interval_s=0.001),
    "hang": Script(fault="hang"),
    "http-500": Script(status=500),
}


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(SCRIPTS, hang_limit_s=10.0) as srv:
        yield srv


def target(base_url: str, model: str, name: str | None = None, timeout_s: float = 20.0) -> Target:
    return Target(id=name or model, label=name or model, backend="openai", model=model, base_url=base_url,
                  timeout_s=timeout_s, connect_timeout_s=2)


def jobs(*targets: Target) -> list[Job]:
    request = ChatRequest((Message("user", "hello"),), make_params(max_tokens=1000))
    return [Job(t, request) for t in targets]


@dataclass(frozen=True)
class Frame:
    at: float  # when it was yielded
    statuses: tuple[str, ...]
    texts: tuple[str, ...]
    columns: list[Column]  # live objects: the runner updates them in place


async def drain(run: Run) -> tuple[list[Frame], float]:
    """Every frame as it was when yielded, and the wall time of the whole run."""
    start = time.perf_counter()
    frames = []
    async for columns in run.frames():
        frames.append(Frame(time.perf_counter(), tuple(c.status for c in columns), tuple(c.text for c in columns),
                            columns))
    return frames, time.perf_counter() - start


async def assert_no_task_left() -> None:
    """None of the runner's tasks survive it; anything else must finish at once."""
    loop = measure_loop().loop  # the runner's tasks live on the measurement loop
    for _ in range(100):
        left = [t for t in asyncio.all_tasks(loop) if t.get_name().startswith("target:")]
        if not left:
            break
        await asyncio.sleep(0.01)
    assert not left, left
    others = asyncio.all_tasks() - {asyncio.current_task()}
    # the openai SDK leaves some of its async generators to the loop's finalizer, which
    # closes them in a task of its own: those end within a few loop turns
    for _ in range(20):
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if not others:
            return
        await asyncio.sleep(0)
    assert not others, others


async def warm(server: ScriptedServer) -> None:
    """Open this loop's client (connection warm-up) so timed runs measure only the streams."""
    await drain(Run(jobs(target(server.base_url, "fast"))))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_targets_run_concurrently(server: ScriptedServer) -> None:
    await warm(server)
    one = time.perf_counter()
    await drain(Run(jobs(target(server.base_url, "half-second"))))
    single = time.perf_counter() - one
    n = 4
    frames, wall = await drain(Run(jobs(*[target(server.base_url, "half-second", f"t{i}") for i in range(n)])))
    columns = frames[-1].columns
    assert [c.status for c in columns] == ["done"] * n
    assert all(c.text == text_of(7) for c in columns)
    assert wall >= 0.5
    assert wall < 0.6 * n * single, (wall, single)
    await assert_no_task_left()


async def test_slow_target_does_not_delay_a_fast_one(server: ScriptedServer) -> None:
    await warm(server)
    start = time.perf_counter()
    fast_final_at: float | None = None
    slow_then: tuple[str, str] | None = None
    async for columns in Run(jobs(target(server.base_url, "slow"), target(server.base_url, "fast"))).frames():
        if fast_final_at is None and columns[1].final:
            fast_final_at, slow_then = time.perf_counter() - start, (columns[0].status, columns[0].text)
    slow, fast = columns
    assert fast.status == "done" and slow.status == "done"
    assert fast_final_at is not None and fast_final_at < 0.6, fast_final_at
    assert slow_then == ("streaming", "")  # the slow one had not even started its answer
    fast_m, slow_m = fast.metrics(), slow.metrics()
    assert fast_m.ttft_s is not None and fast_m.ttft_s < 0.3
    assert slow_m.ttft_s is not None and slow_m.ttft_s >= 1.2
    assert fast.timeline.ended is not None and slow.timeline.ended is not None
    assert fast.timeline.ended < slow.timeline.ended - 0.5


async def test_broken_targets_do_not_break_the_others(server: ScriptedServer) -> None:
    frames, _ = await drain(Run(jobs(
        target(server.base_url, "http-500"),
        target(f"http://127.0.0.1:{closed_port()}/v1", "fast", "refused"),
        target(server.base_url, "fast"),
    )))
    broken, refused, ok = frames[-1].columns
    assert (broken.status, broken.error_kind) == ("error", ErrorKind.SERVER)
    assert (refused.status, refused.error_kind) == ("error", ErrorKind.CONNECTION)
    assert ok.status == "done" and ok.text == text_of(5) and ok.error is None
    await assert_no_task_left()


async def test_deadline_turns_a_hang_into_a_timeout(server: ScriptedServer) -> None:
    await warm(server)
    frames, wall = await drain(Run(jobs(
        target(server.base_url, "hang", timeout_s=0.5),
        target(server.base_url, "half-second"),
    )))
    hung, ok = frames[-1].columns
    assert (hung.status, hung.error_kind) == ("error", ErrorKind.TIMEOUT)
    assert ok.status == "done" and ok.text == text_of(7)
    e2e = hung.metrics().e2e_s
    assert e2e is not None and 0.45 <= e2e < 1.5, e2e
    assert wall < 3.0
    await assert_no_task_left()


async def test_deadline_covers_the_whole_answer_not_just_reads(server: ScriptedServer) -> None:
    # tokens keep coming (so no read ever times out) but the answer takes longer than allowed
    await warm(server)
    frames, wall = await drain(Run(jobs(target(server.base_url, "trickle", timeout_s=0.6))))
    [column] = frames[-1].columns
    assert (column.status, column.error_kind) == ("error", ErrorKind.TIMEOUT)
    assert "0.6 s" in (column.error or "")
    assert column.text and text_of(60).startswith(column.text)  # partial text kept
    assert wall < 1.5
    await assert_no_task_left()


@pytest.mark.parametrize("from_thread", [False, True])
async def test_stop_ends_everything_quickly(server: ScriptedServer, from_thread: bool) -> None:
    await warm(server)
    run = Run(jobs(target(server.base_url, "long", "a"), target(server.base_url, "long", "b"),
                   target(server.base_url, "fast"), target(server.base_url, "hang", timeout_s=10)))
    stopped_at: float | None = None
    stopper = threading.Thread(target=run.stop)
    async for columns in run.frames():
        if stopped_at is None and columns[0].text and columns[1].text and columns[2].final:
            stopped_at = time.perf_counter()
            stopper.start() if from_thread else run.stop()
    ended = time.perf_counter()
    if from_thread:
        stopper.join(5.0)
    assert stopped_at is not None
    assert ended - stopped_at < 1.0
    a, b, fast, hang = columns
    assert [a.status, b.status, fast.status, hang.status] == ["stopped", "stopped", "done", "stopped"]
    for column in (a, b):
        assert column.text and text_of(100).startswith(column.text) and column.text != text_of(100)
        assert column.timeline.ended is not None
    assert hang.text == "" and hang.error is None
    assert all(c.final for c in columns)
    await assert_no_task_left()


async def test_frames_are_paced_not_per_token(server: ScriptedServer) -> None:
    await warm(server)
    frame_s = 0.05
    frames, wall = await drain(Run(jobs(target(server.base_url, "flood"), target(server.base_url, "fast")),
                                   frame_s=frame_s))
    flood = frames[-1].columns[0]
    assert flood.status == "done" and flood.text == text_of(500)
    assert len(frames) <= wall / frame_s + 3, (len(frames), wall)
    assert len(frames) < 100  # 500 tokens, far fewer frames
    assert len(frames) >= 2  # live frames did come before the end
    # a column's first text is shown at once, not at the next paced frame; every other frame is paced
    first_text = [any(t and not p for t, p in zip(b.texts, a.texts)) for a, b in zip(frames, frames[1:])]
    gaps = [b.at - a.at for a, b, early in zip(frames, frames[1:-1], first_text) if not early]
    assert all(g >= frame_s * 0.5 for g in gaps), gaps
    assert sum(first_text) <= 2


async def test_first_text_is_shown_at_once_not_at_the_next_frame(server: ScriptedServer) -> None:
    await warm(server)
    frames, _ = await drain(Run(jobs(target(server.base_url, "half-second")), frame_s=10.0))
    first = next(f for f in frames if f.texts[0])
    delta_at = first.columns[0].timeline.deltas[0].at
    assert first.at - delta_at < 0.05, (first.at - delta_at)


async def test_final_frame_has_every_column_final(server: ScriptedServer) -> None:
    frames, _ = await drain(Run(jobs(target(server.base_url, "fast"), target(server.base_url, "http-500"),
                                     target(server.base_url, "half-second"))))
    *live, last = frames
    assert last.statuses == ("done", "error", "done")
    assert all(c.final and c.timeline.ended is not None for c in last.columns)
    assert live and not all(status in ("done", "error") for status in live[0].statuses)  # earlier: live
    await assert_no_task_left()


async def test_one_column_stops_and_the_others_finish(server: ScriptedServer) -> None:
    await warm(server)
    run = Run(jobs(target(server.base_url, "long", "a"), target(server.base_url, "hang", timeout_s=10),
                   target(server.base_url, "long", "c")))
    stopped_at: float | None = None
    async for columns in run.frames():
        if stopped_at is None and columns[0].text:
            stopped_at = time.perf_counter()
            run.stop_column(1)  # the stuck one
            run.stop_column(0)
        if stopped_at is not None and columns[1].final:
            assert columns[1].timeline.ended is not None and columns[1].timeline.ended - stopped_at < 0.5
    a, hang, c = columns
    assert [a.status, hang.status, c.status] == ["stopped", "stopped", "done"]
    assert a.text and text_of(100).startswith(a.text) and a.text != text_of(100)  # its partial answer is kept
    assert c.text == text_of(100)
    await assert_no_task_left()


async def test_a_backend_that_raises_anything_fails_only_its_column_as_an_internal_error() -> None:
    from playground.errors import BackendError

    class Raising:
        def __init__(self, exc: Exception) -> None:
            self.exc = exc

        def availability(self) -> Any:
            from playground.errors import READY

            return READY

        async def stream(self, request: ChatRequest) -> Any:
            raise self.exc
            yield

    t = target("http://127.0.0.1:9/v1", "m")
    backends = [Raising(ValueError("bad shape")), Raising(BackendError(ErrorKind.RATE_LIMITED, "slow down", 7.0))]
    frames, _ = await drain(Run(jobs(t, t), backends=backends))  # type: ignore[arg-type]
    plain, limited = frames[-1].columns
    assert (plain.status, plain.error_kind, plain.error) == ("error", ErrorKind.INTERNAL, "ValueError: bad shape")
    assert (limited.error_kind, limited.error) == (ErrorKind.RATE_LIMITED, "slow down")


async def test_a_visitors_typed_key_is_blanked_in_their_own_run_and_only_there() -> None:
    """The runner blanks the keys of the run's visitor in what a backend says (a notice, an error);
    another visitor's run keeps the same words: a key typed as "hello" must not blank everyone's."""
    from playground.errors import READY, BackendError
    from playground.events import Notice
    from playground.secrets import Credentials

    key = "visitor-key-0123456789"

    class Echoing:
        def availability(self) -> Any:
            return READY

        async def stream(self, request: ChatRequest) -> Any:
            yield Notice(f"sent {key}")
            raise BackendError(ErrorKind.SERVER, f"the server says {key} is wrong")

    t = target("http://127.0.0.1:9/v1", "m")
    typed = Credentials({"PLAYGROUND_USER_API_KEY": key}, False, frozenset({"PLAYGROUND_USER_API_KEY"}))
    mine = ChatRequest((Message("user", "hello"),), credentials=typed)
    theirs = ChatRequest((Message("user", "hello"),))
    (a,), (b,) = [(await drain(Run([Job(t, r)], backends=[Echoing()])))[0][-1].columns  # type: ignore[list-item]
                  for r in (mine, theirs)]
    assert (a.notices, a.error) == (["sent ***"], "the server says *** is wrong")
    assert (b.notices, b.error) == ([f"sent {key}"], f"the server says {key} is wrong")


def test_the_internal_error_shape_is_written_once() -> None:
    """``BackendError.wrap`` names an unexpected exception's type; nothing else builds that message."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "playground"
    shape = re.compile(r'ErrorKind\.INTERNAL, f"\{type\(exc\)\.__name__\}: \{exc\}"')
    assert [p.name for p in root.rglob("*.py") if shape.search(p.read_text(encoding="utf-8"))] == ["errors.py"]
