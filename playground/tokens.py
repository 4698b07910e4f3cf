"""Token estimates for streams whose server reports no ``usage``. Always shown with "~".

Uses the bundled SmolLM2 tokenizer (a byte-level BPE like most chat models') through the
``tokenizers`` library once the ONNX cache holds it; before that, about 4 characters a token.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from playground import models


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Any | None:
    path = models.bundled_onnx_dir() / "tokenizer.json"
    if not (models.is_complete(models.bundled_onnx_dir()) and path.is_file()):
        return None
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path))
    except Exception:  # noqa: BLE001 - the estimate falls back to characters
        return None


def estimate_tokens(text: str) -> int:
    if not text:
        return 0
    tokenizer = _tokenizer()
    if tokenizer is not None:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)
    return max(1, math.ceil(len(text) / 4))
