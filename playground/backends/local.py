"""What the local backends share: load-once models, worker threads, stop flags.

Models are loaded once per process and shared by every session. Loads and generation
run in worker threads; events cross to the event loop with ``call_soon_threadsafe``.
Loads use ``concurrent.futures`` rather than asyncio futures so that every event loop
(Gradio's, the command line's, each test's) can wait on the same load.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import Future
from typing import Any, AsyncIterator, Callable

from playground.backends.base import BackendError
from playground.events import ErrorKind, Event, Failed, Progress

Emit = Callable[[Event], None]

_models: dict[str, Future[Any]] = {}
_slots: dict[str, threading.BoundedSemaphore] = {}
_lock = threading.Lock()


class StopFlag(threading.Event):
    """A stop flag that also wakes other events when set, so a waiter blocks on one event
    instead of polling the flag (120 streams polling every 5 ms were 24,000 GIL grabs a second)."""

    def __init__(self) -> None:
        super().__init__()
        self._wakes: list[threading.Event] = []

    def wake_on_set(self, event: threading.Event) -> None:
        self._wakes.append(event)
        if self.is_set():
            event.set()

    def set(self) -> None:
        super().set()
        for event in list(self._wakes):
            event.set()


def local_slots() -> int:
    """How many generations may share one loaded model at once (PLAYGROUND_LOCAL_SLOTS)."""
    try:
        return max(1, int(os.environ.get("PLAYGROUND_LOCAL_SLOTS", "2")))
    except ValueError:
        return 2


async def load_shared(key: str, loader: Callable[[], Any]) -> Any:
    """Run ``loader`` once per process for ``key`` in a thread; everyone awaits the same result.

    A failed load is forgotten so that the next run can try again.
    """
    with _lock:
        future = _models.get(key)
        if future is None:
            future = Future()
            _models[key] = future
            threading.Thread(target=_run_load, args=(key, loader, future), daemon=True).start()
    return await asyncio.wrap_future(future)


def _run_load(key: str, loader: Callable[[], Any], future: Future[Any]) -> None:
    try:
        future.set_result(loader())
    except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
        with _lock:
            _models.pop(key, None)
        future.set_exception(exc)


def is_loaded(key: str) -> bool:
    future = _models.get(key)
    return bool(future and future.done() and not future.exception())


def loaded(key: str) -> Any | None:
    """The model loaded for ``key``, or None if it is not (yet) loaded."""
    future = _models.get(key)
    return future.result() if future and future.done() and not future.exception() else None


def forget(key: str, model: Any) -> None:
    """Drop ``model`` (a dead model process) so that the next run loads ``key`` again."""
    with _lock:
        future = _models.get(key)
        if future is not None and future.done() and not future.exception() and future.result() is model:
            del _models[key]


def _slot(key: str) -> threading.BoundedSemaphore:
    with _lock:
        if key not in _slots:
            _slots[key] = threading.BoundedSemaphore(local_slots())
        return _slots[key]


def queue_timeout_s() -> float:
    """How long a request may wait for a busy model before it gives up (PLAYGROUND_QUEUE_TIMEOUT_S)."""
    try:
        return max(1.0, float(os.environ.get("PLAYGROUND_QUEUE_TIMEOUT_S", "300")))
    except ValueError:
        return 300.0


def wait_to_acquire(lock: threading.Lock | threading.Semaphore, stop: threading.Event, emit: Emit,
                    waiting: str, clock: Callable[[], float] = time.monotonic) -> bool:
    """Acquire ``lock``, saying ``waiting`` and for how long while it is busy; False if stopped
    meanwhile; a BackendError (timeout) after PLAYGROUND_QUEUE_TIMEOUT_S."""
    if lock.acquire(blocking=False):
        return True
    started, limit, shown = clock(), queue_timeout_s(), -1
    while not stop.is_set():
        waited = clock() - started
        if int(waited) != shown:
            shown = int(waited)
            emit(Progress(f"{waiting} ({shown} s)" if shown else waiting))
        if waited >= limit:
            raise BackendError(ErrorKind.TIMEOUT, f"{waiting}: gave up after {limit:g} s (PLAYGROUND_QUEUE_TIMEOUT_S)")
        if lock.acquire(timeout=0.05):
            return True
    return False


def acquire_slot(key: str, stop: threading.Event, emit: Emit) -> bool:
    """Wait for a free generation slot on a shared model; False if stopped meanwhile."""
    return wait_to_acquire(_slot(key), stop, emit, "waiting: this model is busy with other requests")


async def fetch_from_hub(find: Callable[[bool], Any], target: Any, missing: str) -> AsyncIterator[str | Any]:
    """Progress lines, then what ``find(local_only)`` found: the cache first, else a download."""
    found = await asyncio.to_thread(find, True)
    if found is None:
        yield f"downloading {target.model} ({target.download_gb or '?'} GB)…"
        try:
            found = await asyncio.to_thread(find, False)
        except Exception as exc:  # noqa: BLE001 - offline, gated, missing
            raise BackendError(ErrorKind.CONNECTION, f"could not download {target.model}: {exc}") from None
    if found is None:
        raise BackendError(ErrorKind.NOT_FOUND, missing)
    yield found


async def locate(found: AsyncIterator[str | Any], where: list[Any]) -> AsyncIterator[Progress]:
    """Progress while ``found`` looks for a model (its lines, then "loading model…"); what it
    found last is appended to ``where``."""
    yield Progress("loading model…")
    async for item in found:
        if isinstance(item, str):
            yield Progress(item)
        else:
            where.append(item)
    yield Progress("loading model…")


def release_slot(key: str) -> None:
    _slot(key).release()


async def stream_from_thread(
    work: Callable[[Emit, threading.Event], None], join_timeout_s: float = 5.0
) -> AsyncIterator[Event]:
    """Run blocking ``work(emit, stop)`` in a thread and yield what it emits, as it comes.

    Closing or cancelling the iterator sets ``stop``; the worker checks it each token,
    and we wait (bounded) for the thread to finish so nothing is left running.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event | None] = asyncio.Queue()
    stop = StopFlag()

    def emit(event: Event) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(queue.put_nowait, event)

    def put_all(events: list[Event]) -> None:
        for event in events:
            queue.put_nowait(event)

    def emit_many(events: list[Event]) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(put_all, events)

    emit.many = emit_many  # type: ignore[attr-defined]  # see WorkerProcess._deliver_batch

    def run() -> None:
        try:
            work(emit, stop)
        except BackendError as exc:
            emit(Failed(exc.kind, exc.message, exc.retry_after))
        except Exception as exc:  # noqa: BLE001 - reported in the column
            emit(Failed(ErrorKind.INTERNAL, f"{type(exc).__name__}: {exc}"))
        finally:
            emit(None)  # type: ignore[arg-type]

    thread = threading.Thread(target=run, name="playground-generate", daemon=True)
    thread.start()
    try:
        while True:
            event = await queue.get()
            if event is None:
                return
            if isinstance(event, Failed):
                raise BackendError(event.kind, event.message, event.retry_after)
            yield event
    finally:
        stop.set()
        deadline = time.monotonic() + join_timeout_s
        while thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


class IncrementalDecoder:
    """Turns token ids into text one token at a time without splitting a character.

    The prefix/read offset scheme keeps tokenizers' merge rules (leading spaces,
    multi-byte characters) intact; a token that ends mid-character yields "".
    """

    def __init__(self, decode: Callable[[list[int]], str]):
        self._decode = decode
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before) :]
        return ""


def check_context(prompt_tokens: int, max_new: int, context: int | None, label: str) -> int:
    """Refuse a prompt that does not fit; return how many new tokens fit."""
    if context is None:
        return max_new
    if prompt_tokens >= context:
        raise BackendError(
            ErrorKind.BAD_REQUEST,
            f"prompt too long: {prompt_tokens:,} tokens, but {label} holds {context:,}",
        )
    return min(max_new, context - prompt_tokens)
