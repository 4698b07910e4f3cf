"""Local Hugging Face transformers: one shared model per process, a worker thread, a stop flag.

Vision targets load an ``AutoProcessor`` too. A native model (Phi-4-multimodal) takes chat-template
image parts; remote code (Phi-3.5-vision, only with ``trust_remote_code: true``) takes Phi's
``<|image_N|>`` tags and ``processor(prompt, images)``.
"""

from __future__ import annotations

import asyncio
import re
import threading
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, ClassVar

from playground import models
from playground.backends import local
from playground.errors import Availability, BackendError, ErrorKind
from playground.events import Event, Progress
from playground.images import PreparedImage
from playground.vision import tagged_dicts

if TYPE_CHECKING:
    from playground.catalog import Target
    from playground.request import ChatRequest

REQUIRED = ("torch", "transformers")


def hub_cached(repo_id: str, filename: str = "config.json") -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename), str)
#: what Phi-3(.5)-vision's remote code (modeling_phi3_v.py) calls on transformers' DynamicCache
REMOTE_CODE_CACHE_API = ("get_max_length", "seen_tokens", "get_usable_length", "from_legacy_cache")


class TransformersOptions(local.GgufOptions):
    trust_remote_code: bool | None = None  # run the repository's own model code (Phi-3.5-vision)
    dtype: str | None = None  # torch dtype to load in (default: the checkpoint's)


class TransformersBackend(local.LocalBackend):
    name: ClassVar[str] = "transformers"
    Options = TransformersOptions
    supports_vision: ClassVar[bool] = True  # for targets with vision: true

    def availability(self) -> Availability:
        return local.availability(self.target, REQUIRED, lambda missing: f"install {' and '.join(missing)}",
                                  lambda: hub_cached(self.target.model))

    def _check_remote_code(self) -> None:
        """Refuse, before any download, remote code known to break on this transformers."""
        import transformers
        from transformers import DynamicCache

        problem = remote_code_problem(self.target, DynamicCache(), transformers.__version__)
        if problem:
            raise BackendError(ErrorKind.UNAVAILABLE, problem)

    def _explain(self, exc: BaseException) -> BackendError | None:
        import transformers

        message = explain_remote_code_error(exc, self.target, transformers.__version__)
        return BackendError(ErrorKind.UNAVAILABLE, message) if message else None

    def _size_gb(self) -> float | None:
        """What the loaded model will hold. transformers dequantizes a GGUF: a 4-5 bit file holds
        about 8 times its size once its weights are float32 (the bundled 135M model: 0.1 -> 0.6 GB)."""
        if self.target.options.source == "bundled":
            folder = models.bundled_dir()
            on_disk = local.size_on_disk_gb(folder / (self.target.options.gguf_file or models.BUNDLED_GGUF)) if folder else None
            return on_disk * 8 if on_disk else None
        return self.target.options.download_gb

    def _load(self) -> tuple[Any, Any, Any]:
        """(tokenizer, model, processor or None)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer

        target = self.target
        kwargs: dict[str, Any] = {}
        if target.options.source == "bundled":
            folder = models.bundled_dir()
            if folder is None:
                raise BackendError(ErrorKind.UNAVAILABLE, models.INSTALL_HINT)
            where = str(folder)
            kwargs["gguf_file"] = target.options.gguf_file or models.BUNDLED_GGUF
        else:
            where = target.model
            if target.options.gguf_file:
                kwargs["gguf_file"] = target.options.gguf_file
        if target.options.trust_remote_code:
            kwargs["trust_remote_code"] = True
        model_kwargs = {"attn_implementation": "eager"} if target.options.trust_remote_code and target.vision else {}
        processor = AutoProcessor.from_pretrained(where, **kwargs) if target.vision else None
        tokenizer = getattr(processor, "tokenizer", None) or AutoTokenizer.from_pretrained(where, **kwargs)
        dtype = getattr(torch, target.options.dtype) if target.options.dtype else "auto"
        # Phi-3.5-vision's config asks for flash-attention, which a CPU install lacks
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs, **model_kwargs)
        model.eval()
        stop_between_layers(model)
        return tokenizer, model, processor

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        if request.images and not self.target.vision:
            raise BackendError(ErrorKind.BAD_REQUEST, f"{self.target.label} is not a vision target: it cannot take images")
        if self.target.options.trust_remote_code:
            await asyncio.to_thread(self._check_remote_code)  # importing transformers takes seconds
        what = f"{'downloading and loading' if self.target.options.source == 'hub' else 'loading'} model…"
        if not local.is_loaded(self.key):
            yield Progress(what)
        loaded: list[Any] = []
        try:
            async for progress in local.watched(local.load_shared(self.key, self._load, self._size_gb,
                                                                  self.target.label), what, loaded):
                yield progress
            tokenizer, model, processor = loaded[0]
        except BackendError:
            raise
        except (OSError, ValueError, ImportError, AttributeError) as exc:
            explained = self._explain(exc)
            if explained:
                raise explained from None
            if isinstance(exc, AttributeError):
                raise
            hint = "; it needs trust_remote_code: true in the catalog" if "trust_remote_code" in str(exc) else ""
            raise BackendError(ErrorKind.UNAVAILABLE, f"could not load {self.target.model}: {exc}{hint}") from None
        context = self.target.context_length or getattr(model.config, "max_position_embeddings", None)

        def work(emit: local.Emit, stop: threading.Event) -> None:
            inputs = self.inputs(tokenizer, processor, request)
            try:
                self._generate(tokenizer, model, inputs, request, context, emit, stop)
            except AttributeError as exc:
                explained = self._explain(exc)
                if explained:
                    raise explained from None
                raise

        async with aclosing(local.stream_from_thread(work)) as events:  # closing this closes it: stops the thread
            async for event in events:
                yield event

    def inputs(self, tokenizer: Any, processor: Any, request: ChatRequest) -> Any:
        """Token ids (and pixel values) for ``generate``."""
        if not request.images:
            return tokenizer.apply_chat_template(
                request.as_dicts(), add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
        if self.target.options.trust_remote_code:  # Phi-3.5-vision's processor: tags in the text, images beside
            prompt = tokenizer.apply_chat_template(tagged_dicts(request), add_generation_prompt=True, tokenize=False)
            return processor(prompt, [image.to_pil() for image in request.images], return_tensors="pt")
        return processor.apply_chat_template(
            hf_image_messages(request), add_generation_prompt=True, tokenize=True, return_dict=True,
            return_tensors="pt",
        )

    def _generate(self, tokenizer: Any, model: Any, inputs: Any, request: ChatRequest, context: int | None,
                  emit: local.Emit, stop: threading.Event) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        params = request.params
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        decoder = local.IncrementalDecoder(lambda ids: tokenizer.decode(ids, skip_special_tokens=True))

        def run(tokens: local.Tokens) -> None:
            prompt_seen = False

            class TokenStreamer(BaseStreamer):
                def put(self, value: Any) -> None:
                    nonlocal prompt_seen
                    if not prompt_seen:  # generate() first hands over the prompt
                        prompt_seen = True
                        return
                    for token_id in value.reshape(-1).tolist():
                        tokens.push(token_id)

                def end(self) -> None:
                    pass

            class StopOnFlag(StoppingCriteria):
                def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                    return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

            sampling: dict[str, Any] = {"do_sample": False}
            if not params.greedy:
                sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
                if params.seed is not None:
                    sampling = seeded_sampling(model, params.temperature, params.top_p, params.seed)
            tokens.request_sent()
            _running.stop = stop
            try:
                with torch.inference_mode():
                    model.generate(
                        **inputs,
                        max_new_tokens=tokens.max_new,
                        streamer=TokenStreamer(),
                        stopping_criteria=StoppingCriteriaList([StopOnFlag()]),
                        pad_token_id=tokenizer.pad_token_id or next(iter(eos_ids), None),
                        **sampling,
                    )
            except _Stopped:
                pass
            finally:
                _running.stop = None

        local.generate(self.key, self.target.label, int(inputs["input_ids"].shape[1]), params.max_tokens, context,
                       emit, stop, decoder.push, eos_ids.__contains__, run)


def seeded_sampling(model: Any, temperature: float, top_p: float, seed: int) -> dict[str, Any]:
    """``generate`` options that sample with this request's own ``torch.Generator``.

    ``torch.manual_seed`` is global, and two generations may share a model in two threads: each
    would draw from the other's seeded stream. Here the warpers ``generate`` would apply
    (temperature, the model's top_k, top_p) run in our own processor list, which then draws the
    token with the request's generator and leaves it the only finite logit; ``generate``'s own
    draw, with its warpers off, has one choice.
    """
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
    )

    generator = torch.Generator().manual_seed(seed)

    class Draw(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            chosen = torch.multinomial(torch.softmax(scores.float(), dim=-1), 1, generator=generator)
            return torch.full_like(scores, float("-inf")).scatter_(1, chosen, 0.0)

    warpers: list[Any] = [TemperatureLogitsWarper(temperature)]
    top_k = getattr(model.generation_config, "top_k", None)
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
            "logits_processor": LogitsProcessorList([*warpers, Draw()])}


class _Stopped(Exception):
    """Raised inside ``generate`` by a layer's hook once the running generation's Stop is set."""


_running = threading.local()  # the stop flag of the generation this thread runs; models are shared


def _check_stop(module: Any, args: Any) -> None:
    stop = getattr(_running, "stop", None)
    if stop is not None and stop.is_set():
        raise _Stopped


def stop_between_layers(model: Any) -> None:
    """Check the running generation's Stop before each layer (each module in a ``ModuleList``), so that
    Stop reaches a long prompt's evaluation, one forward pass, not only the token after it."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList):
            for layer in module:
                layer.register_forward_pre_hook(_check_stop)


# --- image messages and Phi-3(.5)-vision's remote code ---------------------------------
def hf_image_messages(request: ChatRequest, to_pil: Callable[[PreparedImage], Any] | None = None
                      ) -> list[dict[str, Any]]:
    """Chat-template messages with image parts (``{"type": "image", "image": PIL}``) for an
    ``AutoProcessor``: images first, then the text, as Phi's own prompts place them."""
    to_pil = to_pil or (lambda image: image.to_pil())
    return [{"role": m.role, "content": [{"type": "image", "image": to_pil(i)} for i in m.images]
             + [{"type": "text", "text": m.content}]} for m in request.messages]


def is_phi3_vision(target: Target) -> bool:
    name = target.model.lower().replace("_", "-")
    return "phi-3" in name and "vision" in name


def remote_code_problem(target: Target, cache: Any, version: str) -> str | None:
    """Why Phi-3(.5)-vision's remote code cannot run on this transformers, before any download.

    ``cache`` is a ``DynamicCache()``: the remote code calls methods later versions removed.
    """
    if not (getattr(target.options, "trust_remote_code", None) and is_phi3_vision(target)):
        return None
    missing = [name for name in REMOTE_CODE_CACHE_API if not hasattr(cache, name)]
    return remote_code_message(target, version, missing[0]) if missing else None


def remote_code_message(target: Target, version: str, attribute: str) -> str:
    model = "Phi-3.5-vision" if "3.5" in target.model else "Phi-3-vision"
    major_minor = ".".join(version.split(".")[:2])
    return (f"{model}'s remote code does not work with transformers {major_minor} "
            f"(DynamicCache.{attribute} was removed); use the ONNX or a cloud target")


def explain_remote_code_error(exc: BaseException, target: Target, version: str) -> str | None:
    """A clear line for remote code that broke on a newer transformers; None if it is something else."""
    if not getattr(target.options, "trust_remote_code", None):
        return None
    text = str(exc)
    if isinstance(exc, ImportError):  # the remote code imports what this transformers no longer has
        version = ".".join(version.split(".")[:2])
        return (f"the remote code of {target.model} does not work with transformers {version} ({text}); "
                "use the ONNX or a cloud target")
    if not isinstance(exc, AttributeError):
        return None
    for name in REMOTE_CODE_CACHE_API:
        if re.search(rf"\b{name}\b", text):
            return remote_code_message(target, version, name)
    if "Cache" in text and "has no attribute" in text:
        found = re.search(r"has no attribute '(\w+)'", text)
        return remote_code_message(target, version, found.group(1) if found else "?")
    return None
