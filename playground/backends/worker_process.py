"""A local model in a child process of its own, shared by every session of this one.

Why a process: onnxruntime-genai's Python binding keeps the GIL while it computes a token. In
process it starves the event loop (every column's frames then arrive in bursts) and any other
local column. A child has its own GIL. The parent's side keeps the contract of a worker thread,
``generate(target, request, emit, stop)``, so ``local.stream_from_thread`` runs it unchanged.

Messages cross a socket pair as pickles (``multiprocessing.connection``). Events keep the
child's ``time.perf_counter()`` stamps: on Linux that is CLOCK_MONOTONIC, one clock for both
processes. The child leaves when its socket closes, so it never outlives the app.

Parent -> child: ``("load", "module:function", args)``, then ``("gen", id, target, request)``
and ``("stop", id)``. Child -> parent: ``("ready",)`` or ``("failed", error)``, then
``("event", id, event)`` and ``("done", id, error | None)``, where an error is a
``BackendError`` (it pickles as itself). A ``generate`` that names a ``send_loop`` (the measurement
process's) has every message written by that event loop, never blocking it: several messages at
once as one ``("batch", [...])``.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from playground import secrets, settings
from playground.errors import BackendError, ErrorKind
from playground.backends.local import Emit, StopFlag


if TYPE_CHECKING:
    from playground.catalog import Target
    from playground.request import ChatRequest

log = logging.getLogger(__name__)


hang_limit_s = settings.model_hang_s  # how long a model process may send nothing while a request waits


Generate = Callable[["Target", "ChatRequest", Emit, threading.Event], None]
LOAD_TIMEOUT_S = 15 * 60  # a multi-GB model from a slow disk; the child's death ends the wait sooner
BEAT_S = 1.0  # the child says it is alive this often, from a thread of its own
LINGER_S = 0.01  # the measurement process's loop writes at most this often while streams flow
STOP_POLL_S = 0.005  # how often a waiting request looks at a plain stop flag: under one token
DEAD_POLL_S = 0.25  # with a StopFlag that wakes it, a request only looks now and then for a dead child
#: a stopped request the child has not ended by then is inside one library call that cannot be
#: interrupted (onnxruntime-genai evaluating an image prompt, in one piece): the process is ended
STOP_GRACE_S = 3.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass
class _Pending:
    emit: Emit
    done: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)  # done, or the stop flag was set
    error: BackendError | None = None

    def finish(self) -> None:
        self.done.set()
        self.wake.set()


class WorkerProcess:
    """The parent's handle on one child process that holds one loaded model."""

    def __init__(self, name: str, factory: str, args: tuple[Any, ...], keeps_keys: bool = False,
                 ends_stuck_stops: bool = True):
        """``keeps_keys``: the child needs the API keys (the measurement process); a model process
        starts with an environment that holds none. ``ends_stuck_stops``: a request still running
        ``STOP_GRACE_S`` after its Stop, alone in the process, ends the process (a model process;
        the measurement process's streams always end at a stop)."""
        self.name, self.keeps_keys, self.ends_stuck_stops = name, keeps_keys, ends_stuck_stops
        self._factory, self._args = factory, args
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._closed = False
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._dead: str | None = None
        self._last_beat = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def exit_code(self) -> int | None:
        return self._proc.poll() if self._proc else None

    @property
    def alive(self) -> bool:
        return self._dead is None and self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = LOAD_TIMEOUT_S) -> WorkerProcess:
        """Start the child and wait until its model is loaded; BackendError if it cannot load."""
        ours, theirs = socket.socketpair()
        base = os.environ if self.keeps_keys else secrets.without_secrets(dict(os.environ))
        env = dict(base, PYTHONPATH=os.pathsep.join(
            p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p))
        try:
            # the child's stdout goes to our stderr: a library's prints must not mix into `run --json`
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "playground.backends.worker_process", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=2, env=env)
        finally:
            theirs.close()
        self._sock = ours  # kept for shutdown(): close() alone does not end a recv() in another thread
        self._conn = Connection(os.dup(ours.fileno()))
        self._send(("load", self._factory, self._args))
        deadline = time.monotonic() + timeout_s
        while True:
            if self._conn.poll(0.1):
                try:
                    reply = self._conn.recv()
                    break
                except (EOFError, OSError):  # its end closed: it exited
                    self._exited_while_loading()
            elif self._proc.poll() is not None:
                self._exited_while_loading()
            if time.monotonic() > deadline:
                self.close()
                raise BackendError(ErrorKind.TIMEOUT, f"{self.name}: loading took over {timeout_s:.0f} s")
        if reply[0] != "ready":
            self.close()
            raise reply[1]
        self._last_beat = time.monotonic()  # the load is over: from now on it beats
        threading.Thread(target=self._read, name=f"worker-reader:{self.name}", daemon=True).start()
        return self

    def _exited_while_loading(self) -> None:
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self.close()
        raise BackendError(ErrorKind.INTERNAL, f"{self.name}: the model process exited (code {code}) while loading")

    def generate(self, target: Target, request: ChatRequest, emit: Emit, stop: threading.Event) -> None:
        """Run one generation in the child, relaying its events; the same contract as a worker thread."""
        if not self.alive:
            raise BackendError(ErrorKind.INTERNAL, f"{self.name}: {self._dead or 'the model process is not running'}")
        request_id = next(self._ids)
        pending = self._pending[request_id] = _Pending(emit)
        wakes = isinstance(stop, StopFlag)
        if wakes:
            stop.wake_on_set(pending.wake)  # so this thread sleeps until something happens
        try:
            self._send(("gen", request_id, target, request))
            stop_sent: float | None = None
            while not pending.done.is_set():
                pending.wake.wait(DEAD_POLL_S if wakes else STOP_POLL_S)
                pending.wake.clear()
                if pending.done.is_set():
                    break
                self._check_heartbeat()
                if self._dead is not None:  # it died before this request was registered with the reader
                    pending.error = pending.error or BackendError(ErrorKind.INTERNAL, f"{self.name}: {self._dead}")
                    break
                if stop.is_set() and stop_sent is None:
                    self._send(("stop", request_id))
                    stop_sent = time.monotonic()
                if stop_sent is not None and self._stuck(stop_sent):
                    return  # stopped, as asked: the process that could not stop is gone
        except OSError:
            pending.error = BackendError(ErrorKind.INTERNAL, f"{self.name}: the model process is gone")
        finally:
            self._pending.pop(request_id, None)
        if pending.error is not None:
            raise pending.error

    def _stuck(self, stop_sent: float) -> bool:
        """A stopped request still running after the grace, and no other request in the process:
        end the process (the next run starts a fresh one and loads the model again)."""
        if not self.ends_stuck_stops or time.monotonic() - stop_sent < STOP_GRACE_S or len(self._pending) > 1:
            return False
        log.warning("%s: a stopped request was still running after %g s (a call the library cannot "
                    "interrupt); ending the process", self.name, STOP_GRACE_S)
        self._dead = (f"it was ended to stop a request it could not interrupt for {STOP_GRACE_S:g} s; "
                      "the next run starts it again")
        if self._proc is not None:
            self._proc.kill()
        return True

    def _check_heartbeat(self) -> None:
        """A child whose beats stopped is hung (a library holding the GIL for good): kill it, so its
        requests fail now and the next run starts a fresh one (PLAYGROUND_MODEL_HANG_S)."""
        silent = time.monotonic() - self._last_beat
        limit = hang_limit_s()
        if silent > limit and self._dead is None and self._proc is not None and self._proc.poll() is None:
            log.error("%s sent nothing for %.0f s: hung; killing it", self.name, silent)
            self._dead = f"the model process stopped answering for {limit:g} s (hung); the next run starts a fresh one"
            self._proc.kill()  # its socket closes: the reader fails every request still waiting

    def close(self) -> None:
        """Close once, from any thread: the reader closes on an unreadable message while the owner may
        close too, and a second ``os.close`` of the number could close whatever file reused it."""
        with self._close_lock:
            first, self._closed = not self._closed, True
        if first:
            self._close_channel()
        if self._proc is not None and self._proc.poll() is None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._dead = self._dead or "the model process was closed"

    def _close_channel(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # the child sees end-of-file and leaves
            except OSError:
                pass
            self._sock.close()
        if self._conn is not None:
            self._conn.close()

    def _send(self, message: tuple[Any, ...]) -> None:
        assert self._conn is not None
        with self._send_lock:
            self._conn.send(message)

    def _deliver(self, message: tuple[Any, ...]) -> None:
        pending = self._pending.get(message[1])
        if pending is None:
            return  # a request that gave up (its sender is gone)
        if message[0] == "event":
            if not pending.done.is_set():  # a receiver that failed midway gets nothing more
                self._hand(pending, pending.emit, message[2])
        elif message[0] == "done":
            pending.error = message[2]
            pending.finish()

    @staticmethod
    def _hand(pending: _Pending, emit: Callable[[Any], None], what: Any) -> None:
        """One request's receiver failing (its loop closed under it) ends that request, not the reader
        that every other request of this process depends on."""
        try:
            emit(what)
        except Exception as exc:  # noqa: BLE001
            pending.error = BackendError(ErrorKind.INTERNAL, f"its events could not be delivered ({type(exc).__name__})")
            pending.finish()

    def _deliver_batch(self, batch: list[tuple[Any, ...]]) -> None:
        """A batch's messages in their order (a request's events before its end)."""
        for one in batch:
            if one[0] != "beat":  # the measurement process's loop batches its heartbeats too
                self._deliver(one)

    def _read(self) -> None:
        assert self._conn is not None and self._proc is not None
        failure = ""
        try:
            while True:
                message = self._conn.recv()
                self._last_beat = time.monotonic()  # any message shows the child is alive
                if message[0] == "beat":
                    continue
                if message[0] == "batch":
                    self._deliver_batch(message[1])
                else:
                    self._deliver(message)
        except (EOFError, OSError):
            pass
        except Exception as exc:  # noqa: BLE001 - an unreadable message: never a silent death of the reader
            failure = f"{type(exc).__name__}: {exc}"
            log.error("%s: its messages could not be read: %s", self.name, failure)
            self._dead = f"its messages could not be read ({failure}); the next run starts it again"
            self.close()
        code = self._proc.poll()
        if code is None:
            try:
                code = self._proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                code = None
        why = f"its messages could not be read ({failure})" if failure else f"the model process exited (code {code})"
        self._dead = self._dead or f"{why}; the next run starts it again"
        for pending in list(self._pending.values()):
            pending.error = BackendError(ErrorKind.INTERNAL, f"{self.name}: {self._dead}")
            pending.finish()


# --- the child ---------------------------------------------------------------------------
def _serve(conn: Connection) -> None:
    send_lock = threading.Lock()

    def send_now(message: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(message)

    _, factory, args = conn.recv()
    try:
        module, attr = factory.split(":")
        generate: Generate = getattr(importlib.import_module(module), attr)(*args)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which shows it in the column
        conn.send(("failed", BackendError.wrap(exc)))
        return
    conn.send(("ready",))
    send = send_now
    send_loop: asyncio.AbstractEventLoop | None = getattr(generate, "send_loop", None)
    if send_loop is not None:
        # a stamping event loop must never wait on a parent too busy to read, nor hand each event to
        # a sender thread (a wake-up and a GIL hand-over per batch): it writes itself, without blocking.
        # A model's token loop sends itself: a sender would compete with the thread that takes a
        # stop message for the gap between two tokens (one token more after Stop)
        send = _LoopSender(conn, send_loop).send
    stops: dict[int, threading.Event] = {}
    threads: list[threading.Thread] = []

    def beat() -> None:
        try:
            while True:
                time.sleep(BEAT_S)
                send(("beat",))
        except (OSError, ValueError, RuntimeError):
            pass  # the parent is gone (RuntimeError: the send loop has closed)

    threading.Thread(target=beat, name="worker-heartbeat", daemon=True).start()

    def run(request_id: int, target: Target, request: ChatRequest, stop: threading.Event) -> None:
        error: BackendError | None = None
        try:
            generate(target, request, lambda event: send(("event", request_id, event)), stop)
        except Exception as exc:  # noqa: BLE001 - reported in the column
            error = BackendError.wrap(exc)
        finally:
            stops.pop(request_id, None)
        try:
            send(("done", request_id, error))
        except (OSError, RuntimeError):
            pass  # the parent is gone

    try:
        while True:
            message = conn.recv()
            if message[0] == "gen":
                _, request_id, target, request = message
                stop = stops[request_id] = StopFlag()
                thread = threading.Thread(target=run, args=(request_id, target, request, stop), daemon=True)
                thread.start()
                threads = [t for t in threads if t.is_alive()] + [thread]
            elif message[0] == "stop" and message[1] in stops:
                stops[message[1]].set()
    except (EOFError, OSError):
        for stop in list(stops.values()):
            stop.set()
        for thread in threads:
            thread.join(timeout=5)


class _LoopSender:
    """Messages written to the parent by one event loop (the measurement loop), which never blocks on it.

    A message after a quiet spell (a first token) is written once the loop has run what is ready
    (every chunk that arrived with it is stamped first); while streams flow, writes are spaced
    ``LINGER_S`` apart and carry everything that came meanwhile, as one ``("batch", [...])``: one
    write and one wake-up of the parent per batch, not per event. The stamps are already taken;
    only the frame waits, by at most that long. A write the socket cannot take now (a parent too
    busy to read) is kept and finished when the socket is writable; the loop never waits on it.
    Other threads (the heartbeat, the end of a request) hand their messages to the loop. The
    bytes are ``Connection.send``'s (a length, then a pickle): the parent reads with ``recv``.
    """

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop):
        # the same socket as ``conn``; MSG_DONTWAIT makes each write non-blocking without making the
        # socket so (the main thread's blocking recv shares its flags)
        self._sock = socket.socket(fileno=os.dup(conn.fileno()))
        self._loop = loop
        self._batch: list[tuple[Any, ...]] = []
        self._out = bytearray()  # written to the socket only in part so far
        self._flush: asyncio.Handle | None = None
        self._watching = False  # a writer callback waits for the socket to take more
        self._last = -float("inf")
        self._gone = False

    def send(self, message: tuple[Any, ...]) -> None:
        """From any thread."""
        if asyncio._get_running_loop() is self._loop:
            self._add(message)
        else:
            self._loop.call_soon_threadsafe(self._add, message)

    def _add(self, message: tuple[Any, ...]) -> None:
        if self._gone:
            return
        self._batch.append(message)
        if self._flush is None:
            wait = self._last + LINGER_S - time.perf_counter()
            self._flush = (self._loop.call_later(wait, self._write_batch) if wait > 0
                           else self._loop.call_soon(self._write_batch))

    def _write_batch(self) -> None:
        self._flush = None
        batch, self._batch = self._batch, []
        if not batch or self._gone:
            return
        payload = ForkingPickler.dumps(batch[0] if len(batch) == 1 else ("batch", batch))
        size = len(payload)
        self._out += struct.pack("!i", size) if size <= 0x7FFFFFFF else struct.pack("!iQ", -1, size)
        self._out += payload
        self._last = time.perf_counter()
        self._write()

    def _write(self) -> None:
        try:
            while self._out:
                sent = self._sock.send(self._out, socket.MSG_DONTWAIT)
                del self._out[:sent]
        except BlockingIOError:
            if not self._watching:
                self._loop.add_writer(self._sock, self._write)
                self._watching = True
            return
        except OSError:  # the parent is gone: the main thread sees its end of the socket close
            self._gone = True
            self._out.clear()
        if self._watching:
            self._loop.remove_writer(self._sock)
            self._watching = False


if __name__ == "__main__":
    # Ctrl+C in a terminal reaches the whole process group: the app shuts down, and we leave
    # when its end of the socket closes, without a traceback of our own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a stop message waits for the GIL, which the token loop's library may hold for a whole token;
    # a short switch interval lets this thread in at the first gap between two tokens
    sys.setswitchinterval(0.001)
    _serve(Connection(int(sys.argv[1])))
