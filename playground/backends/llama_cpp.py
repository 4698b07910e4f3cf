"""Local llama.cpp through llama-cpp-python (an optional extra): one shared ``Llama`` per
GGUF, a token loop in a worker thread, and llama.cpp's own perf counters.

One ``Llama`` holds one KV cache, so generations on a shared model take turns (a lock),
inside the usual local slots. Each turn starts from an empty context (``fresh_context``): the
request before never shortens or changes this one's prompt evaluation. The loop checks the
stop flag after every token.
``load_s`` is the wall time of ``Llama(...)`` and is reported only by the runs that waited
for that load: llama.cpp's ``t_load_ms`` counts up to the first decode, not the load.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

from playground import settings
from playground.backends import local
from playground.backends.gguf import GgufBackend
from playground.errors import READY, Availability, BackendError
from playground.events import (
    ErrorKind, Event, Notice, ServerTimings,
)

if TYPE_CHECKING:
    from playground.request import ChatRequest

INSTALL_HINT = "install the llama.cpp extra: pip install -r requirements-llamacpp.txt (compiles ~7 min)"
DEFAULT_CONTEXT = 4096


def llama_threads(columns: int = 1) -> int:
    """Threads for one llama.cpp generation: PLAYGROUND_LLAMACPP_THREADS, else the CPUs but one,
    shared among the local columns running at once (a lone column gets them all).

    One CPU stays with the app: its stamping loop and the page's frames. ggml's threads spin
    while they wait for each other, so one that shares a CPU with a busy thread holds up all the
    others (here, on 2 CPUs: 2 threads decoded at 21 tok/s beside the app, 1 thread at 38-49).
    The same count serves prompt processing: llama-cpp-python's default of every CPU there made
    TTFT go from 0.15 s to 10 s on a shared 2-core machine.
    """
    return settings.llamacpp_threads() or max(1, (usable_cpus() - 1) // max(1, columns))


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, as a container's cpuset sets it)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 2


class Abort:
    """llama.cpp's abort callback, so that Stop reaches a long prompt's evaluation, not only the next token.

    ggml asks the callback between graph nodes whether to give up the ``llama_decode`` in progress
    (it then returns 2). The callback is libc's ``strlen`` on a two-byte buffer: 1 once the first byte
    is set, else 0, read as the C ``bool`` it must return. A Python callback would take the GIL between
    every node, hundreds of times a token, from a thread that competes with the stamping loop.
    """

    def __init__(self, ctx: Any):
        import ctypes

        import llama_cpp

        self._byte = ctypes.create_string_buffer(2)
        self._lock = threading.Lock()
        self._owner: object | None = None
        try:
            strlen = ctypes.cast(ctypes.CDLL(None).strlen, ctypes.c_void_p).value
        except (OSError, AttributeError, TypeError):  # no C library to ask (Windows): Stop waits for a token
            return
        self._callback = llama_cpp.ggml_abort_callback(strlen)  # kept alive as long as the context
        llama_cpp.llama_set_abort_callback(ctx, self._callback, ctypes.cast(self._byte, ctypes.c_void_p))

    @contextlib.contextmanager
    def armed(self, stop: threading.Event) -> Iterator[None]:
        """While one generation holds the model: its stop flag aborts the decode in progress. Only that
        generation's: a late Stop of the one before cannot abort the next."""
        trip = _Trip(self)
        with self._lock:
            self._owner, self._byte[0] = trip, b"\0"
        if isinstance(stop, local.StopFlag):
            stop.wake_on_set(trip)
        try:
            yield
        finally:
            with self._lock:
                self._owner, self._byte[0] = None, b"\0"
            if isinstance(stop, local.StopFlag):
                stop.no_longer_wake(trip)

    def trip(self, owner: _Trip) -> None:
        with self._lock:
            if self._owner is owner:
                self._byte[0] = b"x"


@dataclass(eq=False)
class _Trip:
    abort: Abort

    def set(self) -> None:
        self.abort.trip(self)


@dataclass
class Engine:
    """A loaded model, shared by every session; ``lock`` gives its one KV cache to one run at a time."""

    llm: Any
    formatter: Any  # llama_chat_format.Jinja2ChatFormatter, or None: no template in the GGUF
    load_s: float
    lock: threading.Lock
    abort: Abort


class LlamaCppBackend(GgufBackend):
    name: ClassVar[str] = "llamacpp"

    @property
    def key(self) -> str:
        return f"{super().key}:{self.target.context_length}"  # the context is made with the model

    def availability(self) -> Availability:
        if self.target.options.source == "hub" and not self.target.options.gguf_file:
            return Availability("unavailable", "gguf_file: name the .gguf file in the hub repository")

        def on_disk() -> Availability:
            path = self._local_path()
            return READY if path.is_file() else Availability("unavailable", f"no GGUF file at {path}")

        return local.availability(self.target, "llama_cpp", INSTALL_HINT,
                                  lambda: self._hub_model(local_only=True) is not None, on_disk)

    def _hub_model(self, local_only: bool) -> Path | None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(hf_hub_download(self.target.model, self.target.options.gguf_file or "",
                                        local_files_only=local_only))
        except LocalEntryNotFoundError:
            return None

    def _hub_missing(self) -> str:
        return f"{self.target.options.gguf_file} not found in {self.target.model}"

    def _load(self, path: Path | None) -> Engine:
        import llama_cpp
        from llama_cpp import llama_chat_format

        if path is None or not path.is_file():
            raise BackendError(ErrorKind.NOT_FOUND, f"no GGUF file at {path}")
        started = time.perf_counter()
        try:
            threads = llama_threads()
            with plain_weight_buffers():
                llm = llama_cpp.Llama(model_path=str(path), n_ctx=self.target.context_length or DEFAULT_CONTEXT,
                                      n_threads=threads, n_threads_batch=threads, verbose=False)
        except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
            raise BackendError(ErrorKind.UNAVAILABLE, f"llama.cpp could not load {path.name}: {exc}") from None
        load_s = time.perf_counter() - started
        template = llm.metadata.get("tokenizer.chat_template")
        formatter = None
        if template:
            def token_text(token: int) -> str:
                return llm._model.token_get_text(token) if token != -1 else ""

            eos = llm.token_eos()
            formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template, eos_token=token_text(eos), bos_token=token_text(llm.token_bos()),
                stop_token_ids=[eos],
            )
        atexit.register(_close_at_exit, weakref.ref(llm))
        return Engine(llm, formatter, load_s, threading.Lock(), Abort(llm.ctx))

    def prompt_ids(self, engine: Engine, request: ChatRequest, emit: local.Emit) -> list[int]:
        """The conversation through the GGUF's own chat template, as token ids."""
        from llama_cpp import llama_chat_format

        messages = request.as_dicts()
        if engine.formatter is not None:
            formatted = engine.formatter(messages=messages)
        else:
            emit(Notice("this GGUF carries no chat template: using ChatML"))
            formatted = llama_chat_format.format_chatml(messages=messages)
        add_bos = not formatted.added_special
        return engine.llm.tokenize(formatted.prompt.encode("utf-8"), add_bos=add_bos, special=True)

    def _generate(self, engine: Engine, request: ChatRequest, emit: local.Emit, stop: threading.Event,
                  load_s: float) -> None:
        import llama_cpp

        llm = engine.llm
        ids = self.prompt_ids(engine, request, emit)
        params = request.params
        decoder = local.IncrementalDecoder(lambda t: llm.detokenize(t).decode("utf-8", errors="replace"))
        vocab = llm._model.vocab

        def run(tokens: local.Tokens) -> list[Event] | None:
            if not _take_turn(engine.lock, stop, emit):
                return None
            try:
                fresh_context(llm)
                threads = llama_threads(local.running_columns())
                if threads != llama_cpp.llama_n_threads(llm.ctx):
                    llama_cpp.llama_set_n_threads(llm.ctx, threads, threads)
                llm.set_seed(params.seed if params.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)
                # llama.cpp times a prompt from its first decode call to the next synchronisation, which a
                # decode aborted by Stop never reached: without one here this prompt's evaluation would
                # count from the aborted one's start (9.86 s reported for a 221 ms TTFT)
                llama_cpp.llama_synchronize(llm.ctx)
                llama_cpp.llama_perf_context_reset(llm.ctx)
                tokens.request_sent()
                generator = llm.generate(ids, temp=params.temperature, top_p=params.top_p)
                try:
                    with engine.abort.armed(stop):
                        for token in generator:
                            if not tokens.push(token):
                                break
                except RuntimeError:  # "llama_decode returned 2": aborted by Stop
                    if not stop.is_set():
                        raise
                finally:
                    generator.close()
                perf = llama_cpp.llama_perf_context(llm.ctx)
            finally:
                engine.lock.release()
            return [engine_timings(perf, tokens.count, len(ids), load_s, threads)]

        local.generate(self.key, self.target.label, len(ids), params.max_tokens, llm.n_ctx(), emit, stop,
                       decoder.push, lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token)), run)


def fresh_context(llm: Any) -> None:
    """Empty the model's context, as a newly created one: the next ``generate`` evaluates its whole prompt.

    ``Llama.generate`` (llama-cpp-python 0.3.36, even with its default ``reset=True``) compares the
    new prompt with the tokens the previous request left (``input_ids[:n_tokens]``), cuts the KV
    cache after their longest common prefix and evaluates only the rest: the same prompt again
    becomes a one-token decode of its last token. Those other batch shapes give other float
    results (greedy text differed on some CPUs), a TTFT without the prompt's evaluation, and
    prompt tokens counted as decoded ones in llama.cpp's perf counters. ``Llama.reset()`` forgets
    the tokens (``n_tokens = 0``) but clears the memory only of recurrent and hybrid models, so the
    KV cache is cleared here too: every cell and the head, as in a new context. The old bytes stay
    in the buffers, never attended to (masked out); zeroing them too (``data=True``) took 45 ms a
    run at 8192 tokens of context on a 2-core machine, and the logits were bitwise the same.
    """
    import llama_cpp

    llm.reset()
    memory = llama_cpp.llama_get_memory(llm.ctx)
    if memory is not None:  # non-causal embedding models allocate none
        llama_cpp.llama_memory_clear(memory, False)


def engine_timings(perf: Any, tokens: int, prompt_tokens: int, load_s: float, threads: int | None = None
                   ) -> ServerTimings:
    """llama.cpp's own counters (``llama_perf_context``) for this run."""
    decode = perf.n_eval / (perf.t_eval_ms / 1000) if perf.n_eval > 0 and perf.t_eval_ms > 0 else None
    return ServerTimings(
        decode_tokens_per_s=decode,
        prompt_eval_s=perf.t_p_eval_ms / 1000,
        load_s=load_s,
        output_tokens=tokens,
        prompt_tokens=prompt_tokens,
        threads=threads,
    )


@contextlib.contextmanager
def plain_weight_buffers() -> Iterator[None]:
    """Load weights into plain CPU buffers, not llama.cpp's "extra" ones (AMX, repacked).

    A build compiled for the machine (pip builds llama.cpp with GGML_NATIVE) uses AMX wherever
    CPUID reports it, and in some VMs CPUID reports AMX that faults on first use: the whole app
    dies with SIGSEGV in ``ggml_backend_amx_mul_mat``. ``Llama()`` has no argument for this, so
    its default model parameters are wrapped while it loads. PLAYGROUND_LLAMACPP_EXTRA_BUFFERS=1
    keeps them on, for machines where AMX works.
    """
    import llama_cpp.llama_cpp as low

    if settings.llamacpp_extra_buffers():
        yield
        return
    with _params_lock:
        real = low.llama_model_default_params

        def plain() -> Any:
            params = real()
            params.use_extra_bufts = False
            return params

        low.llama_model_default_params = plain
        try:
            yield
        finally:
            low.llama_model_default_params = real


_params_lock = threading.Lock()


def _close_at_exit(ref: weakref.ref[Any]) -> None:
    """Free the model while the interpreter still works (its __del__ at shutdown raises)."""
    llm = ref()
    if llm is not None:
        llm.close()


def _take_turn(lock: threading.Lock, stop: threading.Event, emit: local.Emit) -> bool:
    """Wait for the model's KV cache; False if stopped meanwhile."""
    return local.wait_to_acquire(lock, stop, emit, "waiting: llama.cpp runs one generation at a time on this model")
