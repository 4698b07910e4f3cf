"""Which images each target gets, and the model-specific shapes they travel in.

Pure functions: the runner calls :func:`adapt_request` before a target streams; the local
backends build their prompts and inputs with the rest.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Callable

from playground.errors import BackendError, ErrorKind

from playground.images import ImageError, PreparedImage, fit_image

if TYPE_CHECKING:
    from playground.catalog import Target
    from playground.request import ChatRequest

DEFAULT_MAX_IMAGES = 4  # per request, for a vision target that does not say (catalog: max_images)
TEXT_ONLY = "text only"
MULTIMODAL_ONNX_TYPES = ("phi3v", "phi4mm")
#: what Phi-3(.5)-vision's remote code (modeling_phi3_v.py) calls on transformers' DynamicCache
REMOTE_CODE_CACHE_API = ("get_max_length", "seen_tokens", "get_usable_length", "from_legacy_cache")


def text_only_notice(count: int) -> str:
    """The column notice for a text-only target: "text only: image not sent"."""
    return f"{TEXT_ONLY}: {'image' if count == 1 else f'{count} images'} not sent"


def max_images(target: Target) -> int:
    return target.max_images or DEFAULT_MAX_IMAGES


def adapt_request(request: ChatRequest, target: Target, backend_takes_images: bool
                  ) -> tuple[ChatRequest, list[str]]:
    """The request as this target gets it, and the notices for its column.

    A target without ``vision: true`` (or on a backend that cannot send images) gets the text
    alone and a notice saying so. A vision target gets every image fitted to its limits;
    more images than it accepts is a BAD_REQUEST for that column only.
    """
    images = request.images
    if not images:
        return request, []
    if not (target.vision and backend_takes_images):
        notice = text_only_notice(len(images))
        if target.vision:
            notice += f" (the {target.backend} backend cannot send images)"
        return request.without_images(), [notice]
    limit = max_images(target)
    if len(images) > limit:
        raise BackendError(
            ErrorKind.BAD_REQUEST,
            f"{len(images)} images attached, but {target.label} accepts at most {limit}: "
            "remove some, or compare on a target that takes more",
        )
    try:
        max_bytes = getattr(target.options, "max_image_bytes", None)
        fitted = request.map_images(lambda i: fit_image(i, target.max_image_side, max_bytes))
    except ImageError as exc:
        raise BackendError(ErrorKind.BAD_REQUEST, str(exc)) from None
    return fitted, [f"{image.name}: {note}" for image in fitted.images for note in image.notes]


# --- Phi's own image tags: <|image_1|>, <|image_2|>, ... ---------------------------------
def tagged_dicts(request: ChatRequest) -> list[dict[str, str]]:
    """Messages as plain dicts, each image as a ``<|image_N|>`` tag (numbered across the
    conversation) ahead of the text it came with: the form Phi-3-vision and Phi-4-multimodal
    were trained on."""
    out, n = [], 0
    for m in request.messages:
        tags = ""
        for _ in m.images:
            n += 1
            tags += f"<|image_{n}|>\n"
        out.append({"role": m.role, "content": tags + m.content})
    return out


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


# --- transformers -----------------------------------------------------------------------
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
