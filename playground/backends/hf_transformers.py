"""Local Hugging Face transformers: one shared model per process, a worker thread, a stop flag."""

from __future__ import annotations

import time
import threading
from typing import TYPE_CHECKING, Any, AsyncIterator, ClassVar

from playground import models
from playground.backends import local
from playground.backends.base import Availability, BackendError, READY
from playground.events import ErrorKind, Event, Finished, Notice, Progress, RequestSent, TextDelta, Usage

if TYPE_CHECKING:
    from playground.catalog import Target
    from playground.request import ChatRequest

REQUIRED = ("torch", "transformers")


def hub_cached(repo_id: str, filename: str = "config.json") -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename), str)


class TransformersBackend:
    name: ClassVar[str] = "transformers"
    supports_vision: ClassVar[bool] = False

    def __init__(self, target: Target):
        self.target = target

    @property
    def key(self) -> str:
        return f"transformers:{self.target.source}:{self.target.model}:{self.target.gguf_file}"

    def availability(self) -> Availability:
        missing = [m for m in REQUIRED if not models.module_installed(m)]
        if missing:
            return Availability("unavailable", f"install {' and '.join(missing)}")
        if self.target.source == "bundled":
            return READY if models.bundled_dir() else Availability("unavailable", models.INSTALL_HINT)
        if self.target.source == "hub" and not hub_cached(self.target.model):
            size = f"{self.target.download_gb:g} GB" if self.target.download_gb else "the model"
            return Availability("first_run", f"not downloaded yet: first run downloads {size}")
        return READY

    def _load(self) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        target = self.target
        kwargs: dict[str, Any] = {}
        if target.source == "bundled":
            folder = models.bundled_dir()
            if folder is None:
                raise BackendError(ErrorKind.UNAVAILABLE, models.INSTALL_HINT)
            where = str(folder)
            kwargs["gguf_file"] = target.gguf_file or models.BUNDLED_GGUF
        else:
            where = target.model
            if target.gguf_file:
                kwargs["gguf_file"] = target.gguf_file
        if target.trust_remote_code:
            kwargs["trust_remote_code"] = True
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        dtype = getattr(torch, target.dtype) if target.dtype else "auto"
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
        model.eval()
        return tokenizer, model

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        if not local.is_loaded(self.key):
            what = "downloading and loading" if self.target.source == "hub" else "loading"
            yield Progress(f"{what} model…")
        try:
            tokenizer, model = await local.load_shared(self.key, self._load)
        except BackendError:
            raise
        except OSError as exc:
            raise BackendError(ErrorKind.UNAVAILABLE, f"could not load {self.target.model}: {exc}") from None
        context = self.target.context_length or getattr(model.config, "max_position_embeddings", None)

        def work(emit: local.Emit, stop: threading.Event) -> None:
            self._generate(tokenizer, model, request, context, emit, stop)

        async for event in local.stream_from_thread(work):
            yield event

    def _generate(self, tokenizer: Any, model: Any, request: ChatRequest, context: int | None,
                  emit: local.Emit, stop: threading.Event) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        inputs = tokenizer.apply_chat_template(
            request.as_dicts(), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        n_prompt = int(inputs["input_ids"].shape[1])
        params = request.params
        max_new = local.check_context(n_prompt, params.max_tokens, context, self.target.label)
        if max_new < params.max_tokens:
            emit(Notice(f"max new tokens cut to {max_new} to fit the context"))
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        decoder = local.IncrementalDecoder(lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
        state = {"tokens": 0, "eos": False, "prompt_seen": False}

        class TokenStreamer(BaseStreamer):
            def put(self, value: Any) -> None:
                if not state["prompt_seen"]:  # generate() first hands over the prompt
                    state["prompt_seen"] = True
                    return
                for token_id in value.reshape(-1).tolist():
                    now = time.perf_counter()
                    if token_id in eos_ids:
                        state["eos"] = True
                        continue
                    state["tokens"] += 1
                    emit(TextDelta(decoder.push(token_id), tokens=1, at=now))

            def end(self) -> None:
                pass

        class StopOnFlag(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

        sampling: dict[str, Any] = {"do_sample": False}
        if not params.greedy:
            sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
        if not local.acquire_slot(self.key, stop, emit):
            return
        try:
            if params.seed is not None:
                torch.manual_seed(params.seed)
            emit(RequestSent(at=time.perf_counter()))
            with torch.inference_mode():
                model.generate(
                    **inputs,
                    max_new_tokens=max_new,
                    streamer=TokenStreamer(),
                    stopping_criteria=StoppingCriteriaList([StopOnFlag()]),
                    pad_token_id=tokenizer.pad_token_id or next(iter(eos_ids), None),
                    **sampling,
                )
        finally:
            local.release_slot(self.key)
        emit(Usage(n_prompt, state["tokens"], "counted"))
        reason = "stopped" if stop.is_set() else ("stop" if state["eos"] else "length")
        emit(Finished(reason))
