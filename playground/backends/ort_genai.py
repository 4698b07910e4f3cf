"""Local ONNX Runtime GenAI: a shared ``og.Model`` in a process of its own, a Generator loop per request.

The model lives in a child process (``worker_process``) because onnxruntime-genai holds the GIL
while it computes a token: in the app's process it would stall the event loop and the other columns.
"""

from __future__ import annotations

import json
import re
import threading
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, ClassVar

from playground import models
from playground.backends import local
from playground.errors import READY, Availability, BackendError, ErrorKind
from playground.backends.worker_process import Generate, WorkerProcess
from playground.events import Event
from playground.vision import tagged_dicts

if TYPE_CHECKING:
    from playground.catalog import Target
    from playground.images import PreparedImage
    from playground.request import ChatRequest


PROMPT_PIECE = 64  # prompt tokens evaluated at a time
MULTIMODAL_ONNX_TYPES = ("phi3v", "phi4mm")


class OnnxOptions(local.LocalOptions):
    hub_subfolder: str | None = None  # the folder of the hub repository that holds genai_config.json


class OrtGenAIBackend(local.LocalBackend):
    name: ClassVar[str] = "onnx"
    Options = OnnxOptions
    supports_vision: ClassVar[bool] = True  # for phi3v / phi4mm models; a text model refuses images
    stamps_in_own_process: ClassVar[bool] = True  # the model process stamps each token itself

    @property
    def key(self) -> str:
        return f"onnx:{self.target.options.source}:{self.target.model}:{self.target.options.hub_subfolder}"

    def availability(self) -> Availability:
        def bundled() -> Availability:
            return READY if models.is_complete(models.bundled_onnx_dir()) else Availability(
                "first_run", "first run builds the int4 ONNX model (about a minute on 2 cores)")

        return local.availability(self.target, "onnxruntime_genai", "install onnxruntime-genai",
                                  lambda: self._hub_folder(local_only=True) is not None, bundled=bundled)

    def _hub_folder(self, local_only: bool) -> Path | None:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        sub = self.target.options.hub_subfolder
        try:
            root = snapshot_download(
                self.target.model, allow_patterns=[f"{sub}/*"] if sub else None, local_files_only=local_only
            )
        except LocalEntryNotFoundError:
            return None
        folder = Path(root) / sub if sub else Path(root)
        return folder if (folder / "genai_config.json").is_file() else None

    async def _model_dir(self) -> AsyncIterator[str | Path]:
        if self.target.options.source == "bundled":
            from playground.onnx_build import bundled_onnx_ready

            async for line in bundled_onnx_ready():
                yield line
            yield models.bundled_onnx_dir()
        elif self.target.options.source == "hub":
            missing = f"{self.target.model} has no genai_config.json in {self.target.options.hub_subfolder}"
            async for item in local.fetch_from_hub(self._hub_folder, self.target, missing):
                yield item
        else:
            yield Path(self.target.model).expanduser()

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        worker: WorkerProcess | None = local.loaded(self.key)
        if worker is not None and not worker.alive:  # it crashed or was killed since: start a fresh one
            local.forget(self.key, worker)
            worker = None
        if worker is None:
            workers: list[WorkerProcess] = []
            async for progress in local.find_and_load(self.key, self.target, self._model_dir(), self._start_worker,
                                                      workers):
                yield progress
            worker = workers[0]

        def work(emit: local.Emit, stop: threading.Event) -> None:
            worker.generate(self.target, request, emit, stop)

        async with aclosing(local.stream_from_thread(work)) as events:  # closing this closes it: stops the thread
            async for event in events:
                yield event

    def _start_worker(self, folder: Path | None) -> WorkerProcess:
        name = f"ONNX model {self.target.model}"
        return WorkerProcess(name, f"{__name__}:serve_in_worker", (self.target, folder)).start()

    def load_model(self, folder: Path | None) -> dict[str, Any]:
        import onnxruntime_genai as og

        if folder is None or not (folder / "genai_config.json").is_file():
            raise BackendError(ErrorKind.NOT_FOUND, f"no ONNX GenAI model at {folder}")
        config = json.loads((folder / "genai_config.json").read_text())["model"]
        model = og.Model(str(folder))
        eos = config.get("eos_token_id")
        model_type = str(config.get("type", ""))
        return {
            "og": og,
            "model": model,
            "type": model_type,
            "tokenizer": og.Tokenizer(model),
            "processor": model.create_multimodal_processor() if model_type in MULTIMODAL_ONNX_TYPES else None,
            "context": config.get("context_length"),
            "eos": set(eos if isinstance(eos, list) else [eos]),
        }

    def _prompt(self, loaded: dict[str, Any], request: ChatRequest) -> tuple[Any, list[int] | None, int]:
        """(the processor's named inputs, or None; the token ids, or None; prompt tokens)."""
        og, tokenizer, processor = loaded["og"], loaded["tokenizer"], loaded["processor"]
        if processor is None:
            if request.images:
                raise BackendError(ErrorKind.BAD_REQUEST, f"{self.target.label} is a text-only ONNX model "
                                   f"(model type {loaded['type'] or '?'}): it cannot take images")
            prompt = tokenizer.apply_chat_template(json.dumps(request.as_dicts()), add_generation_prompt=True)
            ids = tokenizer.encode(prompt)
            return None, ids, len(ids)
        apply = lambda text: tokenizer.apply_chat_template(text, add_generation_prompt=True)  # noqa: E731
        prompt = onnx_prompt(apply, request, loaded["type"])
        inputs = onnx_multimodal_inputs(og, processor, prompt, request.images)
        return inputs, None, int(inputs["input_ids"].as_numpy().shape[-1])

    def generate(self, loaded: dict[str, Any], request: ChatRequest, emit: local.Emit, stop: threading.Event) -> None:
        og, tokenizer = loaded["og"], loaded["tokenizer"]
        inputs, ids, n_prompt = self._prompt(loaded, request)
        params = request.params
        decoder = tokenizer.create_stream()

        def run(tokens: local.Tokens) -> None:
            search: dict[str, Any] = {"max_length": n_prompt + tokens.max_new, "do_sample": not params.greedy}
            if not params.greedy:
                search.update(temperature=params.temperature, top_p=params.top_p)
            if params.seed is not None:
                search["random_seed"] = params.seed
            gen_params = og.GeneratorParams(loaded["model"])
            gen_params.set_search_options(**search)
            generator = og.Generator(loaded["model"], gen_params)
            tokens.request_sent()
            if inputs is not None:
                generator.set_inputs(inputs)
            else:
                # a long prompt in pieces, so that Stop reaches its evaluation between them (measured
                # here: 2,000 tokens took 9.9 s in pieces of 64, 10.6 s in pieces of 128, 12.9 s in one)
                for start in range(0, len(ids), PROMPT_PIECE):
                    if stop.is_set():
                        return
                    generator.append_tokens(ids[start:start + PROMPT_PIECE])
            while not generator.is_done():
                generator.generate_next_token()
                if not tokens.push(int(generator.get_next_tokens()[0])):
                    return

        local.generate(self.key, self.target.label, n_prompt, params.max_tokens,
                       self.target.context_length or loaded["context"], emit, stop, decoder.decode,
                       loaded["eos"].__contains__, run)


def serve_in_worker(target: Target, folder: Path | None) -> Generate:
    """Runs in the model's process: load once, then generate for any target on this model."""
    loaded = OrtGenAIBackend(target).load_model(folder)

    def generate(target: Target, request: ChatRequest, emit: local.Emit, stop: threading.Event) -> None:
        OrtGenAIBackend(target).generate(loaded, request, emit, stop)

    return generate


# --- prompts and inputs of the multimodal Phi ONNX models ------------------------------
def phi_prompt(messages: list[dict[str, str]], model_type: str) -> str:
    """The chat format of a multimodal Phi, for when the model's own template cannot be used."""
    sep = "\n" if model_type == "phi3v" else ""
    turns = "".join(f"<|{m['role']}|>{sep}{m['content']}<|end|>{sep}" for m in messages)
    return f"{turns}<|assistant|>{sep}"


def onnx_prompt(apply_template: Callable[[str], str] | None, request: ChatRequest, model_type: str) -> str:
    """The prompt text for a phi3v / phi4mm ONNX model: the model's own chat template over the
    tagged messages, or Phi's format when that template cannot be used."""
    messages = tagged_dicts(request)
    if apply_template is not None:
        try:
            prompt = apply_template(json.dumps(messages))
            if all(f"<|image_{n}|>" in prompt for n in range(1, len(request.images) + 1)):
                return prompt
        except Exception:  # noqa: BLE001 - a template the runtime cannot render
            pass
    return phi_prompt(messages, model_type)


def onnx_multimodal_inputs(og: Any, processor: Any, prompt: str, images: tuple[PreparedImage, ...]) -> Any:
    """``processor(prompt, images=og.Images...)`` with the prepared bytes (no temp files)."""
    tags = sorted(int(n) for n in set(re.findall(r"<\|image_(\d+)\|>", prompt)))
    if tags != list(range(1, len(images) + 1)):
        raise BackendError(ErrorKind.INTERNAL, f"the prompt's image tags {tags} do not match {len(images)} images")
    loaded = og.Images.open_bytes(*[image.data for image in images]) if images else None
    return processor(prompt, images=loaded)
