"""What the local backends share: load-once models, worker threads, stop flags.

Models are loaded once per process and shared by every session. Loads and generation
run in worker threads; events cross to the event loop with ``call_soon_threadsafe``.
Loads use ``concurrent.futures`` rather than asyncio futures so that every event loop
(Gradio's, the command line's, each test's) can wait on the same load.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Iterator, Literal, Protocol

from pydantic import Field

from playground import settings
from playground.backends.base import BackendOptions, TargetBackend
from playground.errors import READY, Availability, BackendError, ErrorKind, first_run
from playground.events import Event, Finished, Notice, Progress, RequestSent, TextDelta, Usage

if TYPE_CHECKING:
    pass

Emit = Callable[[Event], None]

_models: dict[str, Future[Any]] = {}
_slots: dict[str, threading.BoundedSemaphore] = {}
_sizes: dict[str, float] = {}  # GB each loaded (or loading) model is thought to hold
_used_at: dict[str, float] = {}  # when each was last asked for: the least recently used goes first
_lock = threading.Lock()
MEMORY_SHARE = 0.6  # of the machine's RAM, for local models, unless PLAYGROUND_LOCAL_MEMORY_GB says
Size = Callable[[], "float | None"]


class Settable(Protocol):
    def set(self) -> None: ...


class StopFlag(threading.Event):
    """A stop flag that also wakes other events when set, so a waiter blocks on one event
    instead of polling the flag (120 streams polling every 5 ms were 24,000 GIL grabs a second)."""

    def __init__(self) -> None:
        super().__init__()
        self._wakes: list[Settable] = []

    def wake_on_set(self, event: Settable) -> None:
        self._wakes.append(event)
        if self.is_set():
            event.set()

    def no_longer_wake(self, event: Settable) -> None:
        try:
            self._wakes.remove(event)
        except ValueError:
            pass

    def set(self) -> None:
        super().set()
        for event in list(self._wakes):
            event.set()


class LocalOptions(BackendOptions):
    """Where a local backend finds its model: the bundled one, the hub (downloaded once into the
    cache), or a path; and about how big a download it is."""

    source: Literal["bundled", "hub", "path"] | None = None
    download_gb: float | None = Field(None, gt=0)


class GgufOptions(LocalOptions):
    gguf_file: str | None = None  # the file in the bundled package, the hub repository or the folder


class LocalBackend(TargetBackend):
    """A backend that runs its model in this app; ``key`` names the model it loads and shares."""

    Options = LocalOptions

    @property
    def key(self) -> str:
        """One loaded model per key, shared by every target and session that names the same model."""
        t = self.target
        return f"{self.name}:{t.options.source}:{t.model}:{getattr(t.options, 'gguf_file', None)}"


_running = 0
_running_lock = threading.Lock()


@contextlib.contextmanager
def running_column() -> Iterator[None]:
    """A local target's column is running in this process (loading, waiting or generating)."""
    global _running
    with _running_lock:
        _running += 1
    try:
        yield
    finally:
        with _running_lock:
            _running -= 1


def running_columns() -> int:
    """Local columns running at once in this process, over every session."""
    return _running


def availability(target: Any, modules: str | tuple[str, ...], install_hint: str | Callable[[list[str]], str],
                 in_cache: Callable[[], bool], on_disk: Callable[[], Availability] = lambda: READY,
                 bundled: Callable[[], Availability] = lambda: READY) -> Availability:
    """What a local target says, offline: its libraries are missing (``install_hint``, or what it
    says for the missing ones); the bundled model is not installed, else ``bundled()``; a hub model is
    in the cache, else the first run downloads it; or ``on_disk()``."""
    from playground import models

    missing = [m for m in ((modules,) if isinstance(modules, str) else modules)
               if not models.module_installed(m)]  # find_spec: never imported here
    if missing:
        return Availability("unavailable", install_hint if isinstance(install_hint, str) else install_hint(missing))
    if target.options.source == "bundled":
        return bundled() if models.bundled_dir() else Availability("unavailable", models.INSTALL_HINT)
    if target.options.source == "hub":
        return READY if in_cache() else first_run(target.options.download_gb)
    return on_disk()


local_slots = settings.local_slots
queue_timeout_s = settings.queue_timeout_s


def memory_budget_gb() -> float:
    """The memory local models may hold together (PLAYGROUND_LOCAL_MEMORY_GB; default a share of RAM)."""
    chosen = settings.local_memory_gb()
    if chosen is not None:
        return chosen
    try:
        with open("/proc/meminfo") as meminfo:
            total_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
        return MEMORY_SHARE * total_kb / 1024 / 1024
    except (OSError, StopIteration, ValueError):
        return 8.0


def size_on_disk_gb(path: Any) -> float | None:
    """A model file's or folder's size: about what it holds once loaded (weights dominate)."""
    from pathlib import Path

    if path is None:
        return None
    path = Path(path)
    try:
        if path.is_file():
            return path.stat().st_size / 1024**3
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1024**3
    except OSError:
        return None


async def load_shared(key: str, loader: Callable[[], Any], size_gb: Size | None = None, label: str = "") -> Any:
    """Run ``loader`` once per process for ``key`` in a thread; everyone awaits the same result.

    ``size_gb`` (called in that thread) says how much memory the model will hold: before it loads,
    the least recently used idle models are unloaded until it fits the budget, and a model that
    cannot fit is refused with the numbers, never loaded. A failed load is forgotten so that the
    next run can try again.
    """
    with _lock:
        _used_at[key] = time.monotonic()
        future = _models.get(key)
        if future is None:
            future = Future()
            _models[key] = future
            threading.Thread(target=_run_load, args=(key, loader, future, size_gb, label or key),
                             daemon=True).start()
    # shielded: one waiter's Stop must not cancel the load that other sessions wait for
    return await asyncio.shield(asyncio.wrap_future(future))


async def watched(work: Awaitable[Any], what: str, into: list[Any],
                  status: Callable[[], str] | None = None) -> AsyncIterator[Progress]:
    """Progress each second while ``work`` runs ("loading model… (12 s)", or ``status()`` with the
    seconds); its result is appended to ``into``. After PLAYGROUND_QUEUE_TIMEOUT_S the column gives up
    with a TIMEOUT; a load, download or build goes on in its thread, so the next run finds it further along."""
    task = asyncio.ensure_future(work)
    started, limit = time.monotonic(), queue_timeout_s()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=min(1.0, max(0.0, started + limit - time.monotonic())))
            if done:
                into.append(task.result())
                return
            waited = time.monotonic() - started
            if waited >= limit:
                raise BackendError(ErrorKind.TIMEOUT, f"{what.rstrip('…')}: gave up after {limit:g} s "
                                   "(PLAYGROUND_QUEUE_TIMEOUT_S); it goes on in the background for the next run")
            yield Progress(f"{status() if status else what} ({int(waited)} s)")
    finally:
        if not task.done():
            task.cancel()


def _run_load(key: str, loader: Callable[[], Any], future: Future[Any], size_gb: Size | None, label: str) -> None:
    try:
        if size_gb is not None:
            _make_room(key, size_gb(), label)
        future.set_result(loader())
    except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
        with _lock:
            _models.pop(key, None)
            _sizes.pop(key, None)
        future.set_exception(exc)


def _idle(key: str) -> bool:
    slot = _slots.get(key)
    return slot is None or slot._value >= local_slots()  # type: ignore[attr-defined]  # no generation holds it


def _make_room(key: str, needed: float | None, label: str) -> None:
    """Unload idle models, least recently used first, until ``needed`` GB fit the budget; or refuse."""
    if not needed:
        return
    budget = memory_budget_gb()
    evicted: list[Any] = []
    with _lock:
        def held() -> float:
            return sum(size for k, size in _sizes.items() if k != key and k in _models)

        candidates = sorted((k for k in _sizes if k != key and k in _models and _models[k].done() and _idle(k)),
                            key=lambda k: _used_at.get(k, 0.0))
        while held() + needed > budget and candidates:
            victim = candidates.pop(0)
            future = _models.pop(victim)
            _sizes.pop(victim, None)
            if not future.exception():
                evicted.append(future.result())
        if held() + needed > budget:
            busy = held()
            raise BackendError(ErrorKind.UNAVAILABLE, (
                f"{label} needs about {needed:.1f} GB of memory; local models may hold {budget:.1f} GB "
                f"(PLAYGROUND_LOCAL_MEMORY_GB) and {busy:.1f} GB of it is in use by models generating now"
                if busy else f"{label} needs about {needed:.1f} GB of memory; local models may hold "
                f"{budget:.1f} GB (PLAYGROUND_LOCAL_MEMORY_GB)") + ": not loaded")
        _sizes[key] = needed
    for model in evicted:  # outside the lock: closing a model process waits for it
        close = getattr(model, "close", None)
        if callable(close):
            close()
    if evicted:
        import gc

        gc.collect()  # this thread, not an event loop: a full collection holds the GIL a while


def loaded_models() -> dict[str, float]:
    """Loaded (or loading) models and the GB each is thought to hold."""
    with _lock:
        return {k: _sizes.get(k, 0.0) for k in _models}


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
            _sizes.pop(key, None)


def _slot(key: str) -> threading.BoundedSemaphore:
    with _lock:
        if key not in _slots:
            _slots[key] = threading.BoundedSemaphore(local_slots())
        return _slots[key]


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
    _used_at[key] = time.monotonic()
    return wait_to_acquire(_slot(key), stop, emit, "waiting: this model is busy with other requests")


async def fetch_from_hub(find: Callable[[bool], Any], target: Any, missing: str) -> AsyncIterator[str | Any]:
    """Progress lines, then what ``find(local_only)`` found: the cache first, else a download."""
    found = await asyncio.to_thread(find, True)
    if found is None:
        what = f"downloading {target.model} ({target.options.download_gb or '?'} GB)…"
        yield what
        try:
            box: list[Any] = []
            async for progress in watched(asyncio.to_thread(find, False), what, box):
                yield progress.message
            found = box[0]
        except BackendError:
            raise
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


async def find_and_load(key: str, target: Any, find: AsyncIterator[str | Any], load: Callable[[Any], Any],
                        into: list[Any]) -> AsyncIterator[Progress]:
    """Progress while a model is found (``find`` yields progress lines, then where the model is; it
    is not run once the model is loaded) and loaded once per process (``load(where)`` in a thread,
    within the memory budget and the deadline). The loaded model is appended to ``into``."""
    where: list[Any] = []
    looked = not is_loaded(key)
    if looked:
        async for progress in locate(find, where):
            yield progress
    path = where[-1] if where else None

    def load_it() -> Any:
        if not looked:  # it was loaded at the look above, and unloaded since
            raise BackendError(ErrorKind.UNAVAILABLE, f"{target.label} was unloaded to make room for another model "
                               "just now: run it again")
        return load(path)

    async for progress in watched(load_shared(key, load_it,
                                              lambda: size_on_disk_gb(path) or target.options.download_gb,
                                              target.label),
                                  "loading model…", into):
        yield progress


def release_slot(key: str) -> None:
    _slot(key).release()


async def _joined(thread: threading.Thread, timeout_s: float) -> None:
    """Wait, without blocking the loop and for at most ``timeout_s``, for a stopped worker thread to end."""
    deadline = time.monotonic() + timeout_s
    while thread.is_alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def stream_from_thread(
    work: Callable[[Emit, threading.Event], None], join_timeout_s: float = 5.0
) -> AsyncIterator[Event]:
    """Run blocking ``work(emit, stop)`` in a thread and yield what it emits, as it comes.

    Closing or cancelling the iterator sets ``stop``; the worker checks it each token,
    and we wait (bounded) for the thread to finish so nothing is left running.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event | BackendError | None] = asyncio.Queue()
    stop = StopFlag()

    def emit(event: Event) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(queue.put_nowait, event)

    def run() -> None:
        try:
            work(emit, stop)
        except Exception as exc:  # noqa: BLE001 - reported in the column, as it was raised
            emit(BackendError.wrap(exc))  # type: ignore[arg-type]
        finally:
            emit(None)  # type: ignore[arg-type]

    thread = threading.Thread(target=run, name="playground-generate", daemon=True)
    thread.start()
    try:
        while True:
            event = await queue.get()
            if event is None:
                return
            if isinstance(event, BackendError):
                raise event
            yield event
    finally:
        stop.set()
        await _joined(thread, join_timeout_s)


async def deliver_from_thread(
    work: Callable[[Emit, threading.Event], None], sink: Callable[[Event], None], join_timeout_s: float = 5.0
) -> None:
    """Run blocking ``work(sink, stop)`` in a thread of its own: each event goes to ``sink`` on the
    thread that emits it (``sink`` must be thread-safe); return when the work ends, raising what it raised.

    ``stream_from_thread`` without the hop through this loop: for a producer whose events already
    carry their stamps, that hop only forwards them, a wake-up of this loop and two generators per event.
    Cancelling sets ``stop`` and waits (bounded) for the thread, as ``stream_from_thread`` does.
    """
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[BaseException | None] = loop.create_future()
    stop = StopFlag()

    def settle(error: BaseException | None) -> None:
        if not ended.done():
            ended.set_result(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            work(sink, stop)
        except BaseException as exc:  # noqa: BLE001 - raised again on the loop
            error = exc
        finally:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(settle, error)

    thread = threading.Thread(target=run, name="playground-generate", daemon=True)
    thread.start()
    try:
        error = await ended
    finally:
        stop.set()
        await _joined(thread, join_timeout_s)
    if isinstance(error, Exception):
        raise BackendError.wrap(error)
    if error is not None:
        raise error


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


@dataclass
class Tokens:
    """One local generation's tokens as the library makes them: each stamped where it is made,
    decoded without splitting a character, and counted exactly. ``push`` says whether to go on."""

    emit: Emit
    stop: threading.Event
    max_new: int
    decode: Callable[[int], str]  # one token id -> its text (e.g. ``IncrementalDecoder.push``)
    is_eos: Callable[[int], bool]
    count: int = 0
    saw_eos: bool = False
    sent: bool = False

    def request_sent(self) -> None:
        """Call just before the library gets the prompt: the clock's start."""
        self.sent = True
        self.emit(RequestSent(at=time.perf_counter()))

    def push(self, token_id: int, at: float | None = None) -> bool:
        at = at or time.perf_counter()
        if self.stop.is_set():
            return False
        if self.is_eos(token_id):
            self.saw_eos = True
            return False
        self.count += 1
        self.emit(TextDelta(self.decode(token_id), tokens=1, at=at))
        return self.count < self.max_new


def generate(key: str, label: str, prompt_tokens: int, max_tokens: int, context: int | None, emit: Emit,
             stop: threading.Event, decode: Callable[[int], str], is_eos: Callable[[int], bool],
             run: Callable[[Tokens], "list[Event] | None"]) -> None:
    """What every local backend does around its library's token loop: fit the context (saying so
    when the answer must be shorter), wait for a slot on the shared model, run ``run(tokens)`` (which
    calls ``tokens.request_sent()`` then ``tokens.push`` for each token until it says stop), free the
    slot, and report the exact count, the engine's own figures ``run`` returns, and why it ended."""
    max_new = check_context(prompt_tokens, max_tokens, context, label)
    if max_new < max_tokens:
        emit(Notice(f"max new tokens cut to {max_new} to fit the context"))
    if not acquire_slot(key, stop, emit):
        return
    tokens = Tokens(emit, stop, max_new, decode, is_eos)
    try:
        extra = run(tokens) or []
    finally:
        release_slot(key)
    if not tokens.sent:  # stopped while it waited for the model
        return
    emit(Usage(prompt_tokens, tokens.count, "counted"))
    for event in extra:
        emit(event)
    emit(Finished("stopped" if stop.is_set() else "stop" if tokens.saw_eos else "length"))
