"""The llamacpp backend on the bundled SmolLM2 GGUF: real generation, stop, one shared model."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from playground import models
from playground.backends import local
from playground.backends.llama_cpp import INSTALL_HINT, LlamaCppBackend, fresh_context
from playground.catalog import Target
from playground.request import ChatRequest, build_messages, make_params
from playground.runner import Job, run_to_end
from tests.stop_watch import stop_after_tokens, watch_stop

ROOT = Path(__file__).resolve().parents[1]
TARGET_ID = "smollm2-llamacpp"


@pytest.fixture(scope="module")
def target(bundled_gguf, builtin_catalog) -> Target:
    pytest.importorskip("llama_cpp", reason=INSTALL_HINT)
    return builtin_catalog.get(TARGET_ID)


def chat(prompt: str, max_tokens: int) -> ChatRequest:
    return ChatRequest(build_messages(prompt), make_params(temperature=0.0, max_tokens=max_tokens))


async def engine_of(t: Target) -> Any:
    """The shared engine, loading it if this process has not yet."""
    [column] = await run_to_end([Job(t, chat("Hi", 1))], frame_s=0.01)
    assert column.status == "done", column.error
    return await local.load_shared(LlamaCppBackend(t).key, lambda: None)


def test_availability_says_how_to_install_without_importing_llama_cpp(monkeypatch, builtin_catalog, clean_env):
    t = builtin_catalog.get(TARGET_ID)
    monkeypatch.setattr(models, "module_installed", lambda name: name != "llama_cpp")
    missing = LlamaCppBackend(t).availability()
    assert missing.state == "unavailable" and missing.reason == INSTALL_HINT
    assert "pip install -r requirements-llamacpp.txt" in missing.reason
    code = ("import sys; from playground.backends import make_backend; "
            "from playground.catalog import load_catalog; "
            f"print(make_backend(load_catalog().get({TARGET_ID!r})).availability().state); "
            "print('llama_cpp' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "False"  # llama_cpp was looked for, never imported


async def test_real_generation_with_exact_tokens_and_engine_timings(target):
    request = chat("What is the capital of France?", 24)
    [column] = await run_to_end([Job(target, request)], frame_s=0.01)
    assert column.status == "done", column.error
    assert column.text.strip()
    assert column.usage is not None and column.usage.source == "counted"
    deltas = column.timeline.deltas
    assert all(d.tokens == 1 for d in deltas)
    assert [d.at for d in deltas] == sorted(d.at for d in deltas)
    assert column.usage.completion_tokens == len(deltas) == column.counted_tokens
    assert 1 <= len(deltas) <= 24
    assert column.finish_reason == ("length" if len(deltas) == 24 else "stop")

    server = column.server
    assert server is not None
    assert server.decode_tokens_per_s is not None and server.decode_tokens_per_s > 0
    assert server.prompt_eval_s is not None and server.prompt_eval_s >= 0
    assert server.load_s is not None and server.load_s >= 0
    assert server.output_tokens == len(deltas)
    assert server.prompt_tokens == column.usage.prompt_tokens > 10  # the chat template's system turn

    # the GGUF's chat template, applied as llama-cpp-python's own chat handler applies it; from an
    # empty context, as the column's run: else the library would reuse the column's prompt from the
    # KV cache and evaluate only its last token, another evaluation order (other floats)
    engine = await local.load_shared(LlamaCppBackend(target).key, lambda: None)
    with engine.lock:
        fresh_context(engine.llm)
        reference = engine.llm.create_chat_completion(request.as_dicts(), temperature=0.0, max_tokens=24)
    assert column.text == reference["choices"][0]["message"]["content"]


async def test_stop_lands_within_one_token_and_the_worker_ends(target, monkeypatch):
    engine = await engine_of(target)
    seen = watch_stop(monkeypatch)
    seen["generated_after_stop"], real_generate = 0, engine.llm.generate

    def watched_generate(*args, **kwargs):
        for token in real_generate(*args, **kwargs):
            if seen["stop"].is_set():
                seen["generated_after_stop"] += 1
            yield token

    monkeypatch.setattr(engine.llm, "generate", watched_generate)
    await stop_after_tokens(target, "Count from 1 to 500, separated by commas.", 2000, seen)
    assert seen["generated_after_stop"] <= 1
    assert seen["emitted_after_stop"] <= 1


async def test_two_sessions_share_one_loaded_model(target, monkeypatch):
    monkeypatch.setattr(local, "_models", {})  # as if this process had loaded nothing yet
    loads: list[Path | None] = []
    real_load = LlamaCppBackend._load

    def counting_load(self, path):
        loads.append(path)
        return real_load(self, path)

    monkeypatch.setattr(LlamaCppBackend, "_load", counting_load)
    request = chat("Name three colours.", 12)
    first, second = await asyncio.gather(run_to_end([Job(target, request)], frame_s=0.01),
                                         run_to_end([Job(target, request)], frame_s=0.01))
    assert len(loads) == 1
    for [column] in (first, second):
        assert column.status == "done", column.error
        assert column.server is not None and column.server.load_s > 0  # both waited for that one load
    # taking turns on one KV cache, nothing mixed up; and each run starts from an empty context with
    # the same threads, so both evaluate the prompt alike: the same floats, the same greedy text
    assert first[0].text == second[0].text != ""


async def test_each_request_evaluates_its_whole_prompt_afresh(target, monkeypatch):
    """A, then B, then A again: no run reuses what the one before left in the KV cache.

    llama-cpp-python's generate() would evaluate only what follows the longest prefix shared with
    the previous request (here the chat template's system turn and "Name three"), so the prompt
    counter and TTFT would depend on that history, and so could the greedy text (other batch shapes,
    other floats)."""
    import llama_cpp

    engine = await engine_of(target)  # its "Hi" run is still in the context
    memory = llama_cpp.llama_get_memory(engine.llm.ctx)
    assert llama_cpp.llama_memory_seq_pos_max(memory, 0) >= 0
    at_start: list[tuple[int, int]] = []  # (tokens the library keeps, last position in the KV cache)
    evaluated: list[int] = []  # llama.cpp's own count of prompt tokens it evaluated (a batch of >1)
    real_generate, real_perf = engine.llm.generate, llama_cpp.llama_perf_context

    def watched_generate(*args, **kwargs):
        at_start.append((engine.llm.n_tokens, llama_cpp.llama_memory_seq_pos_max(memory, 0)))
        return real_generate(*args, **kwargs)

    def watched_perf(ctx):
        data = real_perf(ctx)
        evaluated.append(data.n_p_eval)
        return data

    monkeypatch.setattr(engine.llm, "generate", watched_generate)
    monkeypatch.setattr(llama_cpp, "llama_perf_context", watched_perf)
    colours, animals = chat("Name three colours.", 12), chat("Name three animals.", 12)
    columns = []
    for request in (colours, animals, colours):
        [column] = await run_to_end([Job(target, request)], frame_s=0.01)
        assert column.status == "done", column.error
        columns.append(column)

    for column, count in zip(columns, evaluated, strict=True):
        assert column.usage is not None and column.server is not None
        assert count == column.usage.prompt_tokens == column.server.prompt_tokens > 10
    assert at_start == [(0, -1)] * 3  # the token list and the KV cache both empty
    assert columns[0].text == columns[2].text != ""  # evaluated alike, so the same greedy text


def test_threads_follow_the_local_columns_running_at_once(monkeypatch, clean_env) -> None:
    from playground.backends import llama_cpp as backend

    monkeypatch.delenv("PLAYGROUND_LLAMACPP_THREADS", raising=False)
    monkeypatch.setattr(backend, "usable_cpus", lambda: 16)
    assert [backend.llama_threads(n) for n in (0, 1, 2, 3, 20)] == [15, 15, 7, 5, 1]  # one CPU stays with the app
    monkeypatch.setattr(backend, "usable_cpus", lambda: 2)
    assert backend.llama_threads(1) == 1
    monkeypatch.setenv("PLAYGROUND_LLAMACPP_THREADS", "3")
    assert backend.llama_threads(5) == 3  # the setting fixes it


async def test_the_column_says_how_many_threads_it_used(target, monkeypatch) -> None:
    from playground.backends import llama_cpp as backend
    from playground.ui_format import status_markdown

    monkeypatch.setattr(backend, "usable_cpus", lambda: 5)
    [column] = await run_to_end([Job(target, chat("Hi", 4))], frame_s=0.01)
    assert column.status == "done", column.error
    assert column.server is not None and column.server.threads == 4  # a lone local column: 5 CPUs but one
    assert "4 threads" in status_markdown(column)
    assert local.running_columns() == 0  # every column that ran has ended


async def test_images_are_refused_by_name(target: Target) -> None:
    """Both GGUF backends are text-only: a direct caller's image is refused, not silently dropped."""
    from playground.backends import make_backend
    from playground.errors import BackendError
    from playground.images import PreparedImage

    image = PreparedImage(name="x.png", mime="image/png", data=b"\x89PNG", width=1, height=1)
    request = ChatRequest(build_messages("What is this?", images=(image,)), make_params(max_tokens=4))
    with pytest.raises(BackendError, match="text-only"):
        async for _ in make_backend(target).stream(request):
            pass
