"""Local OpenVINO GenAI: one shared ``LLMPipeline`` per model on the CPU, a GGUF opened as is or an
OpenVINO IR folder (exported with optimum-intel), filling in ``local.generate``.

It runs in the app's process: ``LLMPipeline.generate`` releases the GIL while it computes, so the
loop that stamps other columns' tokens keeps its ticks (``tests/test_openvino_backend.py`` measures
it). Tokens arrive as ids through a streamer's ``write``, stamped there and counted exactly; its
return value stops the generation within one token. One pipeline holds one KV cache, so the
generations on a shared model take turns (a lock), inside the usual local slots. The prompt is one
call into the library: Stop reaches it once that call returns.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from playground.backends import local
from playground.backends.gguf import GgufBackend
from playground.errors import READY, Availability, BackendError, ErrorKind
from playground.events import Event, ServerTimings

if TYPE_CHECKING:
    from playground.request import ChatRequest

INSTALL_HINT = "pip install openvino-genai"
IR_FILE = "openvino_model.xml"


@dataclass
class Pipeline:
    pipe: Any  # openvino_genai.LLMPipeline
    tokenizer: Any
    eos: frozenset[int]
    load_s: float
    lock: threading.Lock


class OpenVinoBackend(GgufBackend):
    name: ClassVar[str] = "openvino"

    def availability(self) -> Availability:
        def on_disk() -> Availability:
            path = self._local_path()
            return READY if _usable(path) else Availability(
                "unavailable", f"no GGUF file or OpenVINO model ({IR_FILE}) at {path}")

        return local.availability(self.target, "openvino_genai", INSTALL_HINT,
                                  lambda: self._hub_model(local_only=True) is not None, on_disk)

    def _hub_model(self, local_only: bool) -> Path | None:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        gguf = self.target.options.gguf_file
        try:  # a GGUF repository holds many quantisations: fetch only the one named
            folder = Path(snapshot_download(self.target.model, local_files_only=local_only,
                                            allow_patterns=[gguf] if gguf else None))
        except LocalEntryNotFoundError:
            return None
        path = folder / gguf if gguf else folder
        return path if _usable(path) else None

    def _hub_missing(self) -> str:
        return f"{self.target.model} has no {IR_FILE} or GGUF file"

    def _load(self, path: Path | None) -> Pipeline:
        if path is None or not _usable(path):
            raise BackendError(ErrorKind.NOT_FOUND, f"no GGUF file or OpenVINO model ({IR_FILE}) at {path}")
        import openvino_genai as ov

        started = time.perf_counter()
        model = str(_gguf_in(path) or path)
        try:
            try:
                pipe = ov.LLMPipeline(model, "CPU", scheduler_config=fresh_prompts(ov))
            except RuntimeError:
                # a scheduler config asks for paged attention outright; where that cannot run the model,
                # the library's default falls back to its stateful pipeline, and so does this (outside
                # chat mode it evaluates every prompt whole)
                pipe = ov.LLMPipeline(model, "CPU", ATTENTION_BACKEND="SDPA")
        except RuntimeError as exc:  # OpenVINO's exceptions are RuntimeErrors with a long C++ trace
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise BackendError(ErrorKind.UNAVAILABLE, f"OpenVINO could not load {path.name}: {first}") from None
        config = pipe.get_generation_config()
        eos = set(config.stop_token_ids or ()) | ({config.eos_token_id} if config.eos_token_id >= 0 else set())
        return Pipeline(pipe, pipe.get_tokenizer(), frozenset(eos), time.perf_counter() - started, threading.Lock())

    def _generate(self, pipeline: Pipeline, request: ChatRequest, emit: local.Emit, stop: threading.Event,
                  load_s: float) -> None:
        import openvino_genai as ov

        tokenizer, params = pipeline.tokenizer, request.params
        prompt = tokenizer.apply_chat_template(request.as_dicts(), add_generation_prompt=True)
        inputs = tokenizer.encode(prompt, add_special_tokens=False)  # the template wrote the special tokens
        n_prompt = int(inputs.input_ids.shape[1])
        if _cut(tokenizer, prompt, n_prompt):
            raise BackendError(ErrorKind.BAD_REQUEST, f"prompt too long: more than {n_prompt:,} tokens, the most "
                                                      f"OpenVINO's tokenizer for {self.target.label} reads")
        decoder = local.IncrementalDecoder(lambda ids: tokenizer.decode(ids, skip_special_tokens=True))

        def run(tokens: local.Tokens) -> list[Event] | None:
            waiting = "waiting: OpenVINO runs one generation at a time on this model"
            if not local.wait_to_acquire(pipeline.lock, stop, emit, waiting):
                return None
            try:
                config = ov.GenerationConfig()
                config.max_new_tokens = tokens.max_new
                config.stop_token_ids = set(pipeline.eos)
                config.do_sample = not params.greedy
                if not params.greedy:
                    config.temperature, config.top_p = params.temperature, params.top_p
                if params.seed is not None:
                    config.rng_seed = params.seed
                tokens.request_sent()
                result = pipeline.pipe.generate(inputs, config, _streamer(ov, tokens))
            finally:
                pipeline.lock.release()
            return [engine_timings(result.perf_metrics, tokens.count, n_prompt, load_s)]

        local.generate(self.key, self.target.label, n_prompt, params.max_tokens, self.target.context_length,
                       emit, stop, decoder.push, pipeline.eos.__contains__, run)


PROBE = "\n\n probe probe probe"  # a few tokens of its own, whatever precedes it


def _cut(tokenizer: Any, prompt: str, n_prompt: int) -> bool:
    """Whether the tokenizer cut ``prompt``. OpenVINO's tokenizer of a GGUF keeps at most its context
    of tokens (8,192 for SmolLM2), dropping the start of a longer prompt silently, whatever
    ``truncation`` and ``max_length`` say (openvino-genai 2026.4): the prompt and a few tokens more
    then count the same."""
    return int(tokenizer.encode(prompt + PROBE, add_special_tokens=False).input_ids.shape[1]) <= n_prompt


def fresh_prompts(ov: Any) -> Any:
    """OpenVINO's own scheduler for one CPU user (paged attention, a prompt evaluated in one batch),
    without its prefix caching: every request evaluates its whole prompt, as on every other local
    backend.

    By default ``LLMPipeline`` keeps the KV blocks of earlier requests and evaluates only what a new
    prompt adds to the longest prefix it has cached (openvino-genai 2026.4): a 2,600-token prompt
    sent again reached its first token in 0.09 s instead of 2.6 s here. A TTFT that depends on what
    ran before, unseen, is not a comparison.
    """
    config = ov.SchedulerConfig()
    config.max_num_batched_tokens = sys.maxsize  # as its default for LLMPipeline: no split of the prompt
    config.enable_prefix_caching = False
    return config


def _streamer(ov: Any, tokens: local.Tokens) -> Any:
    """Hands each token id to ``tokens`` as it is made; STOP once it says so (Stop, EOS, the limit)."""

    class Streamer(ov.StreamerBase):
        def write(self, token: int | list[int]) -> Any:
            at = time.perf_counter()
            for token_id in token if isinstance(token, list) else [token]:
                if not tokens.push(int(token_id), at):
                    return ov.StreamingStatus.STOP
            return ov.StreamingStatus.RUNNING

        def end(self) -> None:
            pass

    return Streamer()


def engine_timings(perf: Any, tokens: int, prompt_tokens: int, load_s: float) -> ServerTimings:
    """OpenVINO GenAI's own figures for this run (``PerfMetrics``: TTFT and TPOT in milliseconds)."""
    tpot_ms = perf.get_tpot().mean
    return ServerTimings(
        decode_tokens_per_s=1000 / tpot_ms if tpot_ms > 0 and tokens > 1 else None,
        prompt_eval_s=perf.get_ttft().mean / 1000,
        load_s=load_s,
        output_tokens=tokens,
        prompt_tokens=prompt_tokens,
    )


def _gguf_in(path: Path) -> Path | None:
    """The GGUF to open: ``path`` itself, or the one GGUF in a folder without an IR model."""
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    if (path / IR_FILE).is_file():
        return None
    found = sorted(path.glob("*.gguf"))
    return found[0] if len(found) == 1 else None


def _usable(path: Path) -> bool:
    return (path.is_file() and path.suffix == ".gguf") or (path.is_dir() and (
        (path / IR_FILE).is_file() or _gguf_in(path) is not None))
