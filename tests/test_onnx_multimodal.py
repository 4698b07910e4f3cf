"""Local vision paths without a real vision model: prompts and image tags, the inputs handed to
onnxruntime-genai's multimodal processor (real ``og.Images``), transformers' processor inputs, and
Phi-3.5-vision's remote code breaking on this transformers, said before any download."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from playground import models
from playground.backends import local
from playground.errors import BackendError
from playground.backends.hf_transformers import (
    TransformersBackend, explain_remote_code_error, hf_image_messages, remote_code_problem,
)
from playground.backends.ort_genai import OrtGenAIBackend, onnx_multimodal_inputs, onnx_prompt, phi_prompt
from playground.catalog import Catalog, Target
from playground.events import ErrorKind, Event, Finished, RequestSent, TextDelta, Usage
from playground.images import PreparedImage, prepare_image
from playground.request import ChatRequest, Message, build_messages, make_params
from playground.runner import Job, run_to_end
from playground.vision import tagged_dicts

og = pytest.importorskip("onnxruntime_genai")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreparedImage, PreparedImage]:
    folder = tmp_path_factory.mktemp("pictures")
    Image.new("RGB", (64, 32), (200, 0, 0)).save(folder / "red.png")
    Image.new("RGB", (40, 40), (0, 0, 200)).save(folder / "blue.jpg")
    return prepare_image(folder / "red.png"), prepare_image(folder / "blue.jpg")


def conversation(pictures: tuple[PreparedImage, ...]) -> ChatRequest:
    """Two turns: one image earlier, more now; the tags number across the conversation."""
    return ChatRequest((Message("system", "Be brief."), Message("user", "What colour?", pictures[:1]),
                        Message("assistant", "Red."), Message("user", "And these?", pictures)),
                       make_params(max_tokens=4, temperature=0))


# --- prompts and tags ----------------------------------------------------------------------
def test_image_tags_number_across_the_conversation(pictures: tuple[PreparedImage, PreparedImage]) -> None:
    assert tagged_dicts(conversation(pictures)) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<|image_1|>\nWhat colour?"},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "<|image_2|>\n<|image_3|>\nAnd these?"},
    ]


def test_phi_prompt_formats() -> None:
    messages = [{"role": "user", "content": "<|image_1|>\nDescribe."}]
    assert phi_prompt(messages, "phi3v") == "<|user|>\n<|image_1|>\nDescribe.<|end|>\n<|assistant|>\n"
    assert phi_prompt(messages, "phi4mm") == "<|user|><|image_1|>\nDescribe.<|end|><|assistant|>"


def test_onnx_prompt_prefers_the_model_template_and_falls_back(pictures: tuple[PreparedImage, ...]) -> None:
    request = ChatRequest((Message("user", "Describe.", pictures[:1]),))
    seen: list[str] = []

    def template(text: str) -> str:
        seen.append(text)
        return "".join(f"<<{m['role']}>>{m['content']}" for m in json.loads(text)) + "<<assistant>>"

    assert onnx_prompt(template, request, "phi3v") == "<<user>><|image_1|>\nDescribe.<<assistant>>"
    assert json.loads(seen[0]) == [{"role": "user", "content": "<|image_1|>\nDescribe."}]

    def broken(text: str) -> str:
        raise RuntimeError("template not supported")

    expected = "<|user|>\n<|image_1|>\nDescribe.<|end|>\n<|assistant|>\n"
    assert onnx_prompt(broken, request, "phi3v") == expected
    assert onnx_prompt(lambda text: "<<dropped the tags>>", request, "phi3v") == expected
    assert onnx_prompt(None, request, "phi4mm") == "<|user|><|image_1|>\nDescribe.<|end|><|assistant|>"


class FakeProcessor:
    """Stands in for ``model.create_multimodal_processor()``: records what it was called with."""

    def __init__(self, prompt_tokens: int = 7):
        self.calls: list[tuple[str, Any]] = []
        self.prompt_tokens = prompt_tokens

    def __call__(self, prompt: str, images: Any = None) -> dict[str, Any]:
        self.calls.append((prompt, images))
        return {"input_ids": og.Tensor(np.zeros((1, self.prompt_tokens), dtype=np.int32)),
                "pixel_values": "pixels"}


def test_onnx_inputs_use_real_og_images_from_the_prepared_bytes(pictures: tuple[PreparedImage, ...]) -> None:
    processor = FakeProcessor()
    prompt = "<|user|>\n<|image_1|>\n<|image_2|>\nCompare.<|end|>\n<|assistant|>\n"
    inputs = onnx_multimodal_inputs(og, processor, prompt, pictures)
    assert inputs["pixel_values"] == "pixels"
    ((sent_prompt, images),) = processor.calls
    assert sent_prompt == prompt and isinstance(images, og.Images)
    with pytest.raises(BackendError, match=r"image tags \[1\] do not match 2 images"):
        onnx_multimodal_inputs(og, processor, "<|image_1|> only one tag", pictures)


# --- the onnx backend on a fake multimodal model ---------------------------------------------
class FakeTokenizer:
    def apply_chat_template(self, text: str, add_generation_prompt: bool = True) -> str:
        return phi_prompt(json.loads(text), "phi3v")

    def encode(self, text: str) -> list[int]:
        return list(range(len(text.split())))

    def create_stream(self) -> Any:
        class Stream:
            def decode(self, token: int) -> str:
                return f"w{token} "
        return Stream()


class FakeGenerator:
    made: list[FakeGenerator] = []

    def __init__(self, model: Any, params: Any):
        self.params, self.inputs, self.appended, self.steps = params, None, None, 0
        FakeGenerator.made.append(self)

    def set_inputs(self, inputs: Any) -> None:
        self.inputs = inputs

    def append_tokens(self, ids: list[int]) -> None:
        self.appended = ids

    def is_done(self) -> bool:
        return self.steps >= 3

    def generate_next_token(self) -> None:
        self.steps += 1

    def get_next_tokens(self) -> list[int]:
        return [100 + self.steps if self.steps < 3 else 2]  # 2 is the end of text


class FakeParams:
    def __init__(self, model: Any):
        self.search: dict[str, Any] = {}

    def set_search_options(self, **options: Any) -> None:
        self.search = options


class FakeOg:
    Images = og.Images  # the real image loader
    Generator = FakeGenerator
    GeneratorParams = FakeParams


class InProcessModel:
    """Stands in for the model's process: the same ``generate`` on a loaded model, in this one."""

    alive = True

    def __init__(self, loaded: dict[str, Any]):
        self.loaded = loaded

    def generate(self, target: Target, request: ChatRequest, emit: Any, stop: Any) -> None:
        OrtGenAIBackend(target).generate(self.loaded, request, emit, stop)


async def collect(backend: Any, request: ChatRequest) -> list[Event]:
    return [event async for event in backend.stream(request)]


async def test_onnx_phi3v_streams_with_processor_inputs(pictures: tuple[PreparedImage, ...],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    target = Target(id="onnx/fake-phi3v", label="fake phi3v", backend="onnx", model="/nowhere/phi3v",
                    source="path", vision=True, context_length=4096)
    backend = OrtGenAIBackend(target)
    processor = FakeProcessor(prompt_tokens=900)  # image tokens count towards the prompt
    loaded = {"og": FakeOg, "model": object(), "type": "phi3v", "tokenizer": FakeTokenizer(),
              "processor": processor, "context": 131072, "eos": {2}}
    done: Future[Any] = Future()
    done.set_result(InProcessModel(loaded))  # the stand-ins cannot cross to a model process
    monkeypatch.setattr(local, "_models", {backend.key: done})
    FakeGenerator.made.clear()

    events = await collect(backend, conversation(pictures))
    ((prompt, images),) = processor.calls
    assert prompt == ("<|system|>\nBe brief.<|end|>\n<|user|>\n<|image_1|>\nWhat colour?<|end|>\n"
                      "<|assistant|>\nRed.<|end|>\n<|user|>\n<|image_2|>\n<|image_3|>\nAnd these?<|end|>\n"
                      "<|assistant|>\n")
    assert isinstance(images, og.Images)
    (generator,) = FakeGenerator.made
    assert generator.inputs["pixel_values"] == "pixels" and generator.appended is None  # set_inputs, not tokens
    assert generator.params.search["max_length"] == 900 + 4
    assert [type(e) for e in events] == [RequestSent, TextDelta, TextDelta, Usage, Finished]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "w101 w102 "
    assert [e for e in events if isinstance(e, Usage)][0].prompt_tokens == 900


@pytest.fixture(scope="module")
def onnx_model_dir(bundled_gguf: Path) -> Path:
    from playground.onnx_build import ensure_bundled_onnx

    async def build() -> list[str]:
        return [line async for line in ensure_bundled_onnx()]

    asyncio.run(build())
    assert models.is_complete(models.bundled_onnx_dir())
    return models.bundled_onnx_dir()


async def test_a_text_only_onnx_model_says_it_cannot_take_images(builtin_catalog: Catalog, onnx_model_dir: Path,
                                                                 pictures: tuple[PreparedImage, ...]) -> None:
    text_model = builtin_catalog.get("smollm2-onnx")
    claims_vision = Target(**{**text_model.model_dump(exclude_none=True), "id": "smollm2-onnx-vision",
                              "vision": True})
    request = ChatRequest(build_messages("What colour is it?", images=pictures[:1]),
                          make_params(max_tokens=4, temperature=0))
    with pytest.raises(BackendError) as info:
        await collect(OrtGenAIBackend(claims_vision), request)
    assert info.value.kind is ErrorKind.BAD_REQUEST
    assert "is a text-only ONNX model (model type llama): it cannot take images" in info.value.message

    wrong, honest = await run_to_end([Job(claims_vision, request), Job(text_model, request)])
    assert wrong.status == "error" and "text-only ONNX model" in (wrong.error or "")
    assert honest.status == "done" and honest.text.strip()  # the text-only target answers the text
    assert honest.notices == ["text only: image not sent"]


# --- transformers ----------------------------------------------------------------------------
def test_hf_image_messages_put_image_parts_before_the_text(pictures: tuple[PreparedImage, ...]) -> None:
    messages = hf_image_messages(conversation(pictures))
    assert messages[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    last = messages[-1]["content"]
    assert [p["type"] for p in last] == ["image", "image", "text"] and last[-1]["text"] == "And these?"
    assert isinstance(last[0]["image"], Image.Image) and last[0]["image"].size == (64, 32)
    assert last[1]["image"].getpixel((5, 5))[2] > 150  # the blue one, in order


def test_transformers_inputs_native_and_remote_code(builtin_catalog: Catalog,
                                                    pictures: tuple[PreparedImage, ...]) -> None:
    calls: list[tuple[str, Any, dict[str, Any]]] = []

    class Recorder:
        tokenizer = None

        def apply_chat_template(self, messages: Any, **kwargs: Any) -> str:
            calls.append(("template", messages, kwargs))
            return "PROMPT"

        def __call__(self, prompt: str, images: Any, **kwargs: Any) -> str:
            calls.append(("call", (prompt, images), kwargs))
            return "INPUTS"

    request = ChatRequest((Message("user", "Read the chart.", pictures[:1]),))
    native = TransformersBackend(builtin_catalog.get("hf/phi-4-multimodal-instruct"))
    assert native.inputs(Recorder(), Recorder(), request) == "PROMPT"
    kind, messages, kwargs = calls.pop()
    assert kind == "template" and messages[0]["content"][0]["type"] == "image"
    assert kwargs == {"add_generation_prompt": True, "tokenize": True, "return_dict": True, "return_tensors": "pt"}

    remote = TransformersBackend(builtin_catalog.get("hf/phi-3.5-vision-instruct"))
    assert remote.inputs(Recorder(), Recorder(), request) == "INPUTS"
    (kind, (prompt, images), kwargs), = calls[-1:]
    assert calls[-2][1] == [{"role": "user", "content": "<|image_1|>\nRead the chart."}]  # tags for remote code
    assert kind == "call" and prompt == "PROMPT" and kwargs == {"return_tensors": "pt"}
    assert len(images) == 1 and images[0].size == (64, 32)


def test_remote_code_breakage_is_detected(builtin_catalog: Catalog) -> None:
    phi35v = builtin_catalog.get("hf/phi-3.5-vision-instruct")
    assert phi35v.options.trust_remote_code is True

    class OldCache:  # what the remote code was written against
        seen_tokens = 0

        def get_max_length(self) -> None: ...
        def get_usable_length(self) -> None: ...
        def from_legacy_cache(self) -> None: ...

    class NewCache:
        def get_seq_length(self) -> int:
            return 0

    assert remote_code_problem(phi35v, OldCache(), "4.43.0") is None
    assert remote_code_problem(phi35v, NewCache(), "4.53.1") == (
        "Phi-3.5-vision's remote code does not work with transformers 4.53 "
        "(DynamicCache.get_max_length was removed); use the ONNX or a cloud target")
    native = builtin_catalog.get("hf/phi-4-multimodal-instruct")
    assert remote_code_problem(native, NewCache(), "5.0.0") is None  # native code: nothing to check

    error = AttributeError("'DynamicCache' object has no attribute 'get_max_length'")
    assert explain_remote_code_error(error, phi35v, "4.56.2") == (
        "Phi-3.5-vision's remote code does not work with transformers 4.56 "
        "(DynamicCache.get_max_length was removed); use the ONNX or a cloud target")
    assert "DynamicCache.seen_tokens was removed" in explain_remote_code_error(
        AttributeError("'DynamicCache' object has no attribute 'seen_tokens'"), phi35v, "5.1.0")
    assert explain_remote_code_error(AttributeError("'NoneType' object has no attribute 'shape'"), phi35v, "5.1") is None
    assert explain_remote_code_error(error, native, "5.1.0") is None  # no remote code, not its fault
    assert "does not work with transformers 5.1" in explain_remote_code_error(
        ImportError("cannot import name 'is_flash_attn_greater_or_equal_2_10'"), phi35v, "5.1.0")


async def test_phi35_vision_remote_code_is_refused_before_any_download(builtin_catalog: Catalog,
                                                                      pictures: tuple[PreparedImage, ...],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers
    from transformers import DynamicCache

    expected = remote_code_problem(builtin_catalog.get("hf/phi-3.5-vision-instruct"), DynamicCache(),
                                   transformers.__version__)
    if expected is None:
        pytest.skip(f"transformers {transformers.__version__} still has the cache API the remote code uses")
    loads: list[str] = []
    monkeypatch.setattr(TransformersBackend, "_load", lambda self: loads.append("load"))
    request = ChatRequest(build_messages("Describe.", images=pictures[:1]), make_params(max_tokens=4))
    (column,) = await run_to_end([Job(builtin_catalog.get("hf/phi-3.5-vision-instruct"), request)])
    assert column.status == "error" and column.error_kind is ErrorKind.UNAVAILABLE
    major_minor = ".".join(transformers.__version__.split(".")[:2])
    assert column.error == expected
    assert column.error.startswith(f"Phi-3.5-vision's remote code does not work with transformers {major_minor} "
                                   "(DynamicCache.")
    assert column.error.endswith("was removed); use the ONNX or a cloud target")
    assert loads == [] and column.images_sent == 1  # refused before loading (or downloading) anything
