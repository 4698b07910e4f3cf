"""Watches a local generation's Stop: the worker's stop flag and thread, and the text it emits
after the flag is set (a Stop "within one token" allows the one in flight)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from playground.backends import local
from playground.catalog import Target
from playground.events import Event, TextDelta
from playground.request import ChatRequest, build_messages, make_params
from playground.runner import Column, Job, Run


def watch_stop(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """From now on in this test, ``seen`` gets ``stop`` (the flag), ``thread`` (the worker) and
    ``emitted_after_stop`` (text events emitted once the flag was set)."""
    seen: dict[str, Any] = {"emitted_after_stop": 0}
    real_stream = local.stream_from_thread

    def watched_stream(work: Any, *args: Any, **kwargs: Any) -> Any:
        def watched(emit: Any, stop: threading.Event) -> None:
            seen["stop"], seen["thread"] = stop, threading.current_thread()

            def emit_watched(event: Event) -> None:
                if isinstance(event, TextDelta) and stop.is_set():
                    seen["emitted_after_stop"] += 1
                emit(event)

            work(emit_watched, stop)
        return real_stream(watched, *args, **kwargs)

    monkeypatch.setattr(local, "stream_from_thread", watched_stream)
    return seen


async def stop_after_tokens(target: Target, prompt: str, max_tokens: int, seen: dict[str, Any],
                            count: int = 5) -> Column:
    """Runs ``prompt`` on ``target``, presses Stop once ``count`` tokens have arrived, and returns the
    column once its worker thread has ended (failing if it has not within 10 s)."""
    request = ChatRequest(build_messages(prompt), make_params(temperature=0.0, max_tokens=max_tokens))
    run = Run([Job(target, request)], frame_s=0.01)
    tokens_at_stop = None
    columns: list[Column] = []
    async for columns in run.frames():
        if tokens_at_stop is None and columns[0].counted_tokens >= count:
            tokens_at_stop = columns[0].counted_tokens
            run.stop()
    [column] = columns
    assert tokens_at_stop is not None, f"never reached {count} tokens: {column.status} {column.error}"
    assert column.status == "stopped"
    deadline = time.monotonic() + 10
    while seen["thread"].is_alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not seen["thread"].is_alive(), "it went on after Stop"
    return column
