"""Every wait before a local request is sent says what it waits for and for how long, and gives up
at PLAYGROUND_QUEUE_TIMEOUT_S: a model load, a download, another process's ONNX build. Giving up
(or a Stop) frees the column without calling off work that other sessions share."""

from __future__ import annotations

import asyncio
import fcntl
import threading
from pathlib import Path
from typing import Any

import pytest

from playground import models, onnx_build
from playground.backends import local
from playground.errors import BackendError
from playground.catalog import Target
from playground.events import ErrorKind, Progress
from playground.onnx_build import ensure_bundled_onnx


@pytest.fixture(autouse=True)
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAYGROUND_QUEUE_TIMEOUT_S", "2.5")


class SlowLoad:
    """A loader that holds until released: a model that takes long to load."""

    def __init__(self) -> None:
        self.release, self.calls = threading.Event(), 0

    def __call__(self) -> str:
        self.calls += 1
        assert self.release.wait(30), "the test never released the load"
        return "the model"


async def watch(work: Any, what: str) -> tuple[list[str], list[Any]]:
    lines: list[str] = []
    box: list[Any] = []
    async for progress in local.watched(work, what, box):
        assert isinstance(progress, Progress)
        lines.append(progress.message)
    return lines, box


async def test_a_slow_load_shows_the_seconds_gives_up_at_the_deadline_and_goes_on_for_the_next_run() -> None:
    load = SlowLoad()
    key = "waits-slow-load"
    try:
        with pytest.raises(BackendError) as caught:
            await watch(local.load_shared(key, load), "loading model…")
        assert caught.value.kind is ErrorKind.TIMEOUT
        assert "loading model: gave up after 2.5 s (PLAYGROUND_QUEUE_TIMEOUT_S)" in caught.value.message
        assert "goes on in the background" in caught.value.message
        load.release.set()
        lines, box = await watch(local.load_shared(key, load), "loading model…")
        assert box == ["the model"] and load.calls == 1  # the same load, not a second one
    finally:
        load.release.set()
        local._models.pop(key, None)


async def test_the_progress_counts_the_seconds_waited() -> None:
    load = SlowLoad()
    key = "waits-seconds"
    try:
        lines: list[str] = []
        box: list[Any] = []
        async for progress in local.watched(local.load_shared(key, load), "loading model…", box):
            lines.append(progress.message)
            if len(lines) == 2:
                load.release.set()
        assert lines[:2] == ["loading model… (1 s)", "loading model… (2 s)"]
        assert box == ["the model"]
    finally:
        load.release.set()
        local._models.pop(key, None)


async def test_a_stop_while_waiting_for_a_load_does_not_call_it_off_for_another_session() -> None:
    load = SlowLoad()
    key = "waits-shared"
    try:
        first = asyncio.ensure_future(watch(local.load_shared(key, load), "loading model…"))
        second = asyncio.ensure_future(watch(local.load_shared(key, load), "loading model…"))
        await asyncio.sleep(0.2)
        first.cancel()  # the first session pressed Stop
        with pytest.raises(asyncio.CancelledError):
            await first
        load.release.set()
        _, box = await asyncio.wait_for(second, 10)
        assert box == ["the model"] and load.calls == 1
    finally:
        load.release.set()
        local._models.pop(key, None)


async def test_waiting_for_another_processs_onnx_build_counts_seconds_and_gives_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if models.bundled_gguf() is None:
        pytest.skip("the bundled model is not installed")
    monkeypatch.setenv("PLAYGROUND_CACHE", str(tmp_path / "cache"))
    final = models.bundled_onnx_dir()
    final.parent.mkdir(parents=True)
    with open(final.parent / (final.name + ".lock"), "w") as other_build:  # another open file: another build
        fcntl.flock(other_build, fcntl.LOCK_EX)
        lines: list[str] = []
        with pytest.raises(BackendError) as caught:
            async for line in ensure_bundled_onnx():
                lines.append(line)
    assert caught.value.kind is ErrorKind.TIMEOUT and "PLAYGROUND_QUEUE_TIMEOUT_S" in caught.value.message
    assert lines[0] == "building ONNX model: waiting for another process's build to finish (0 s)"
    assert "building ONNX model: waiting for another process's build to finish (2 s)" in lines
    assert not (final.parent / (final.name + ".tmp-0")).exists()


async def test_no_waiting_line_when_no_other_process_builds(tmp_path: Path) -> None:
    """An unheld lock is taken at once and says nothing (no "waiting for another build" at 0 s)."""
    with open(tmp_path / "build.lock", "w") as lock_file:
        lines = [line async for line in onnx_build._take_build_lock(lock_file)]
        assert lines == []
        with open(tmp_path / "build.lock", "w") as other:  # and this process now holds it
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


async def test_a_download_counts_seconds_and_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def find(local_only: bool) -> Any:
        if local_only:
            return None
        release.wait(30)
        return Path("/nowhere")

    target = Target(id="h", label="h", backend="llamacpp", model="someone/model", source="hub", gguf_file="m.gguf",
                    download_gb=1.5)
    lines: list[str] = []
    try:
        with pytest.raises(BackendError) as caught:
            async for item in local.fetch_from_hub(find, target, "missing"):
                lines.append(item)
    finally:
        release.set()
    assert caught.value.kind is ErrorKind.TIMEOUT
    assert lines[:3] == ["downloading someone/model (1.5 GB)…", "downloading someone/model (1.5 GB)… (1 s)",
                         "downloading someone/model (1.5 GB)… (2 s)"]


class SlowBuild:
    """ensure_bundled_onnx's stand-in: one line, then a build that holds until released."""

    def __init__(self) -> None:
        self.release, self.calls = threading.Event(), 0

    async def __call__(self) -> Any:
        self.calls += 1
        yield "building ONNX model (first run only): dequantizing GGUF…"
        while not self.release.is_set():
            await asyncio.sleep(0.05)
        yield "building ONNX model (first run only): layer 30/30 (100%)"


async def test_the_onnx_build_counts_seconds_gives_up_and_goes_on_for_the_next_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from playground import onnx_build

    monkeypatch.setenv("PLAYGROUND_CACHE", str(tmp_path / "cache"))
    build = SlowBuild()
    monkeypatch.setattr(onnx_build, "ensure_bundled_onnx", build)
    lines: list[str] = []
    try:
        with pytest.raises(BackendError) as caught:
            async for line in onnx_build.bundled_onnx_ready():
                lines.append(line)
        assert caught.value.kind is ErrorKind.TIMEOUT
        assert "building ONNX model: gave up after 2.5 s (PLAYGROUND_QUEUE_TIMEOUT_S)" in caught.value.message
        assert lines[0].startswith("building ONNX model (first run only)")  # the build's own first line, or not yet
        waited = [line.removeprefix("building ONNX model (first run only): dequantizing GGUF… ") for line in lines[1:]]
        assert waited[:1] == ["(1 s)"] and waited[1:] in ([], ["(2 s)"]), lines  # a late tick may miss the second
        # the next run joins the same build, still going, and sees it finish
        again: list[str] = []

        async def next_run() -> None:
            async for line in onnx_build.bundled_onnx_ready():
                again.append(line)

        joined = asyncio.ensure_future(next_run())
        for _ in range(500):  # until it has joined the build (its first line), at most 5 s
            if again:
                break
            await asyncio.sleep(0.01)
        build.release.set()
        await asyncio.wait_for(joined, 10)
        assert build.calls == 1
        assert again[0] == "building ONNX model (first run only): dequantizing GGUF…"
    finally:
        build.release.set()
