"""Factories that ``worker_process`` children load in the worker tests (run in the child).

They stand in for a model so that the process plumbing can be tested in milliseconds: a
counter that makes one "token" every ``ms`` milliseconds, a load that fails, a load that dies.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from playground.errors import BackendError
from playground.events import ErrorKind, Finished, RequestSent, TextDelta


def counter(ms: float) -> Any:
    def generate(target: Any, request: Any, emit: Any, stop: threading.Event) -> None:
        emit(RequestSent(at=time.perf_counter()))
        limit = request.params.max_tokens
        for n in range(limit):
            if stop.is_set():
                emit(Finished("stopped"))
                return
            time.sleep(ms / 1000)  # the model's work for one token
            if "boom" in request.messages[-1].content and n == 2:
                raise RuntimeError("the model broke at token 3")
            emit(TextDelta(f"{n} ", tokens=1, at=time.perf_counter()))
        emit(Finished("length"))

    return generate


def missing_model(path: str) -> Any:
    raise BackendError(ErrorKind.NOT_FOUND, f"no model at {path}")


def dies_while_loading() -> Any:
    os._exit(3)


def secret_names() -> Any:
    """A "model" whose answer is the names of the secret-looking variables in its environment."""
    from playground import secrets

    def generate(target: Any, request: Any, emit: Any, stop: threading.Event) -> None:
        emit(RequestSent(at=time.perf_counter()))
        names = sorted(name for name in os.environ if secrets.is_secret_name(name))
        emit(TextDelta(",".join(names) or "none", tokens=1, at=time.perf_counter()))
        emit(Finished("stop"))

    return generate


def _explode() -> Any:
    raise RuntimeError("this message cannot be read here")


class Unreadable:
    """Pickles in the child; unpickling it in the parent raises."""

    def __reduce__(self) -> Any:
        return (_explode, ())


def unreadable() -> Any:
    def generate(target: Any, request: Any, emit: Any, stop: threading.Event) -> None:
        emit(RequestSent(at=time.perf_counter()))
        emit(Unreadable())
        time.sleep(5)  # the parent must not wait for this
        emit(Finished("stop"))

    return generate


def hangs_holding_the_gil() -> Any:
    """A "model" stuck in a C call that keeps the GIL (PyDLL does not release it): nothing else in
    the process runs, its heartbeat included."""
    import ctypes

    def generate(target: Any, request: Any, emit: Any, stop: threading.Event) -> None:
        emit(RequestSent(at=time.perf_counter()))
        ctypes.PyDLL(None).sleep(30)

    return generate


def deaf_while_reading_the_prompt() -> Any:
    """A prompt "stop" cannot reach: one long call that looks at nothing (an image prompt's evaluation in
    onnxruntime-genai), then tokens that do honour it. "short" prompts skip the long call."""
    def generate(target: Any, request: Any, emit: Any, stop: threading.Event) -> None:
        emit(RequestSent(at=time.perf_counter()))
        if "short" not in request.messages[-1].content:
            time.sleep(60)
        for n in range(request.params.max_tokens):
            if stop.is_set():
                emit(Finished("stopped"))
                return
            emit(TextDelta(f"{n} ", tokens=1, at=time.perf_counter()))
            time.sleep(0.01)
        emit(Finished("length"))

    return generate
