"""Stop reaches a local model while it evaluates a long prompt, not only between tokens, and the
stopped generation frees the model at once for the next request: llama.cpp through its abort
callback, transformers between layers, ONNX GenAI between pieces of the prompt."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from playground.backends import make_backend
from playground.catalog import Catalog, Target
from playground.events import RequestSent, ServerTimings, TextDelta
from playground.request import ChatRequest, build_messages, make_params
from tests.test_local_backends import onnx_model_dir, wait_for_no_generate_thread  # noqa: F401  (a fixture)

LONG = "Summarise the following notes. " + " ".join(f"note {i}: the river rises in spring." for i in range(300))
STOP_AFTER_S = 0.4


def chat(prompt: str, max_tokens: int) -> ChatRequest:
    return ChatRequest(build_messages(prompt), make_params(temperature=0, max_tokens=max_tokens))


async def first_event_after_start(target: Target) -> float:
    """Seconds from asking to the request being sent (waiting for the model's slot included)."""
    started = time.perf_counter()
    stream = make_backend(target).stream(chat("Say hi.", 2))
    try:
        async for event in stream:
            if isinstance(event, RequestSent):
                return time.perf_counter() - started
    finally:
        await stream.aclose()
    raise AssertionError("no request was sent")


@pytest.fixture(params=["smollm2-llamacpp", "smollm2-transformers", "smollm2-onnx"])
def target(request: pytest.FixtureRequest, builtin_catalog: Catalog, bundled_gguf: Path) -> Target:
    if request.param == "smollm2-onnx":
        request.getfixturevalue("onnx_model_dir")
    return builtin_catalog.get(request.param)


async def stop_during_the_prompt(target: Target) -> float:
    """Ask for LONG, Stop while its prompt is evaluated; seconds from Stop to the stream's end."""
    await first_event_after_start(target)  # loaded, so that only the prompt's evaluation is timed
    sent = asyncio.Event()
    tokens: list[str] = []

    async def consume() -> None:
        async for event in make_backend(target).stream(chat(LONG, 50)):
            if isinstance(event, RequestSent):
                sent.set()
            elif isinstance(event, TextDelta):
                tokens.append(event.text)

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(sent.wait(), 60)
    await asyncio.sleep(STOP_AFTER_S)
    assert not task.done() and tokens == [], "the prompt was evaluated before Stop: make it longer"
    stopped = time.perf_counter()
    task.cancel()  # what Stop does to a column
    with pytest.raises(asyncio.CancelledError):
        await task
    return time.perf_counter() - stopped


async def test_stop_during_a_long_prompt_ends_it_and_frees_the_model(target: Target) -> None:
    ended = await stop_during_the_prompt(target)
    assert wait_for_no_generate_thread(2.0) == [], "the generation went on after Stop"
    # at most one piece of the prompt (ONNX, in its model process, under a busy test run) and the hop
    # there; without the fix Stop waits for the whole prompt (tens of seconds) or the 5 s join bound
    assert ended < 4.0, f"Stop took {ended:.2f} s to reach the prompt's evaluation"
    waited = await first_event_after_start(target)
    assert waited < 2.0, f"the next request waited {waited:.2f} s for the stopped one's slot"


async def test_a_prompt_stopped_midway_leaves_the_next_requests_llama_cpp_figures_alone(
        builtin_catalog: Catalog, bundled_gguf: Path) -> None:
    """llama.cpp times a prompt from its first decode call to the next synchronisation; an aborted
    decode never synchronised, and the next request's prompt evaluation counted from the aborted
    one's start (9.86 s reported for a 221 ms TTFT)."""
    target = builtin_catalog.get("smollm2-llamacpp")
    await stop_during_the_prompt(target)
    events = [event async for event in make_backend(target).stream(chat("Say hi.", 4))]
    sent = max(e.at for e in events if isinstance(e, RequestSent) and e.at is not None)
    first = min(e.at for e in events if isinstance(e, TextDelta) and e.at is not None)
    [server] = [e for e in events if isinstance(e, ServerTimings)]
    assert server.prompt_eval_s is not None and server.prompt_eval_s <= first - sent + 0.05, (server, first - sent)
