"""What is common to every backend about images: which images a target gets, within which
limits, and Phi's own image tags. The shapes each backend sends them in live in that backend.

Pure functions: the runner calls :func:`adapt_request` before a target streams.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from playground.errors import BackendError, ErrorKind

from playground.images import ImageError, fit_image

if TYPE_CHECKING:
    from playground.catalog import Target
    from playground.request import ChatRequest

DEFAULT_MAX_IMAGES = 4  # per request, for a vision target that does not say (catalog: max_images)
TEXT_ONLY = "text only"


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


