"""Build (once) and cache the int4 CPU ONNX model of the bundled GGUF, with progress.

Two subprocesses: dequantize the GGUF through transformers, then run
``onnxruntime_genai.models.builder``. Everything lands in ``NAME.tmp-PID`` and is
renamed into place with a completion marker, so a half-built cache is never used.
A file lock keeps two processes from building at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import shutil
import threading
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import IO, AsyncIterator

from playground import models, secrets, settings, with_parent
from playground.errors import BackendError, ErrorKind


LAYER_LINE = re.compile(r"Reading layer (\d+)")


async def _run(module: str, args: list[str], on_line: "callable[[str], str | None]") -> AsyncIterator[str]:
    """``python -m module args``, ended with this process even when it is killed (``with_parent``)."""
    # the build reads a local GGUF and needs no key: a crash dump or a builder's log cannot show one
    env = dict(secrets.without_secrets(dict(os.environ)), PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    proc = await asyncio.create_subprocess_exec(
        *with_parent.command(module, *args),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    tail: deque[str] = deque(maxlen=15)
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            tail.append(line)
            message = on_line(line)
            if message:
                yield message
        code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if code != 0:
        detail = " | ".join(t for t in tail if t.strip())[-600:]
        raise BackendError(ErrorKind.INTERNAL, f"building the ONNX model failed ({module}): {detail}")


async def _take_build_lock(lock_file: IO[str]) -> AsyncIterator[str]:
    """Take the build lock; while another process builds, say so each second, up to
    PLAYGROUND_QUEUE_TIMEOUT_S (polled: a thread blocked in ``flock`` could not be called off)."""
    started, limit, shown = time.monotonic(), settings.queue_timeout_s(), -1
    while True:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        waited = time.monotonic() - started
        if waited >= limit:
            raise BackendError(ErrorKind.TIMEOUT, f"building the ONNX model: another process has been building it "
                               f"for over {limit:g} s (PLAYGROUND_QUEUE_TIMEOUT_S); try again later")
        if int(waited) != shown:
            shown = int(waited)
            yield f"building ONNX model: waiting for another process's build to finish ({shown} s)"
        await asyncio.sleep(0.2)


async def ensure_bundled_onnx() -> AsyncIterator[str]:
    """Yield progress lines until the cached ONNX model is ready (instant when cached)."""
    final = models.bundled_onnx_dir()
    if models.is_complete(final):
        _sweep_once(final)
        return
    gguf = models.bundled_gguf()
    if gguf is None:
        raise BackendError(ErrorKind.UNAVAILABLE, models.INSTALL_HINT)
    final.parent.mkdir(parents=True, exist_ok=True)
    lock_file = open(final.parent / (final.name + ".lock"), "w")  # noqa: SIM115
    try:
        async for line in _take_build_lock(lock_file):
            yield line
        if models.is_complete(final):
            return
        models.remove_stale(final)
        work = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        hf_dir, out_dir = work / "hf", work / "onnx"
        work.mkdir(parents=True)
        try:
            yield "building ONNX model (first run only): dequantizing GGUF…"
            async for line in _run("playground.dequantize", [str(gguf), str(hf_dir)], lambda _: None):
                yield line
            layers = json.loads((hf_dir / "config.json").read_text())["num_hidden_layers"]

            def layer_progress(line: str) -> str | None:
                match = LAYER_LINE.search(line)
                if match:
                    done = int(match.group(1)) + 1
                    return f"building ONNX model (first run only): layer {done}/{layers} ({100 * done // layers}%)"
                return "building ONNX model (first run only): saving…" if "Saving ONNX" in line else None

            args = ["-i", str(hf_dir), "-o", str(out_dir), "-p", "int4", "-e", "cpu", "-c", str(work / "cache")]
            async for line in _run("onnxruntime_genai.models.builder", args, layer_progress):
                yield line
            if not (out_dir / "genai_config.json").is_file():
                raise BackendError(ErrorKind.INTERNAL, "building the ONNX model left no genai_config.json")
            models.mark_complete(out_dir, f"built from {gguf.name} by onnxruntime_genai.models.builder -p int4 -e cpu")
            os.rename(out_dir, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        fcntl.flock(lock_file, fcntl.LOCK_UN)
        lock_file.close()


_swept = False


def _sweep_once(final: Path) -> None:
    """Once a process, half-built folders beside a complete cache (an app killed mid-build left one),
    removed under the build lock; skipped while another process holds it."""
    global _swept
    if _swept:
        return
    _swept = True
    try:
        lock_file = open(final.parent / (final.name + ".lock"), "w")  # noqa: SIM115
    except OSError:  # a read-only cache (baked into an image): nothing was built there, nothing to sweep
        return
    with lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another process builds (or the file system has no locks): it sweeps itself
            return
        try:
            models.remove_stale(final)
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


_lock = threading.Lock()
_build: Future[None] | None = None  # this process's build, shared by the columns waiting on it
STARTING = "building ONNX model (first run only)…"
_latest = STARTING
_SECONDS = re.compile(r" \(\d+ s\)$")


def _build_in_thread(future: Future[None]) -> None:
    """The build on a loop of its own: a column that gives up on it (or is stopped) leaves it going."""
    global _build

    async def follow() -> None:
        global _latest
        async for line in ensure_bundled_onnx():
            _latest = _SECONDS.sub("", line)  # the watcher adds the seconds waited

    future.set_running_or_notify_cancel()  # from here no waiter's cancel reaches it
    try:
        asyncio.run(follow())
        future.set_result(None)
    except BaseException as exc:  # noqa: BLE001 - handed to the waiting columns
        future.set_exception(exc)
    finally:
        with _lock:
            if _build is future:
                _build = None  # a failed build is tried afresh by the next run


async def bundled_onnx_ready() -> AsyncIterator[str]:
    """What the build is doing, with the seconds waited, each second until the cached model is ready;
    after PLAYGROUND_QUEUE_TIMEOUT_S the column gives up and the build goes on for the next run."""
    global _build, _latest
    final = models.bundled_onnx_dir()
    if models.is_complete(final):
        if not _swept:  # what a killed build left (up to 517 MB): once, off this loop
            threading.Thread(target=_sweep_once, args=(final,), name="onnx sweep", daemon=True).start()
        return
    from playground.backends import local

    with _lock:
        if _build is None:
            _latest, _build = STARTING, Future()
            threading.Thread(target=_build_in_thread, args=(_build,), name="onnx build", daemon=True).start()
        future = _build
    yield _latest
    done: list[None] = []
    async for progress in local.watched(asyncio.shield(asyncio.wrap_future(future)), "building ONNX model…", done,
                                        status=lambda: _latest):
        yield progress.message
