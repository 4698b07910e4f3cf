"""Token estimates for streams whose chunks are not one token each and whose server reports no
``usage``. Always shown with "~".

Uses the bundled SmolLM2 tokenizer (a byte-level BPE like most chat models') through the
``tokenizers`` library once the ONNX cache holds it; before that, about 4 characters a token.
Loading it takes about 0.2 s, so it is never loaded by the caller: ``preload()`` starts it in a
thread (the app does this at start-up), and until it is ready the estimate counts characters.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from playground import models

RETRY_S = 30.0  # the ONNX cache may appear later (first run of the ONNX column): look again then

_tokenizer: Any | None = None
_lock = threading.Lock()
_loading = False
_last_try = float("-inf")


def _load() -> None:
    global _tokenizer, _loading
    try:
        path = models.bundled_onnx_dir() / "tokenizer.json"
        if models.is_complete(models.bundled_onnx_dir()) and path.is_file():
            from tokenizers import Tokenizer

            _tokenizer = Tokenizer.from_file(str(path))
    except Exception:  # noqa: BLE001 - the estimate falls back to characters
        pass
    finally:
        _loading = False


def preload(wait: bool = False) -> None:
    """Load the tokenizer in a background thread (at most every ``RETRY_S`` until it loads)."""
    global _loading, _last_try
    with _lock:
        if _tokenizer is not None or _loading or time.monotonic() - _last_try < RETRY_S:
            return
        _loading, _last_try = True, time.monotonic()
        thread = threading.Thread(target=_load, name="tokenizer-load", daemon=True)
        thread.start()
    if wait:
        thread.join()


def estimate_tokens(text: str) -> int:
    """Never blocks: a character estimate until the tokenizer has loaded."""
    if not text:
        return 0
    tokenizer = _tokenizer
    if tokenizer is None:
        preload()
        return max(1, math.ceil(len(text) / 4))
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


TOKENIZER_NAME = "SmolLM2 tokenizer"


def is_smollm2(target: Any) -> bool:
    """The targets whose model uses the tokenizer held here: SmolLM2, bundled or from the hub (every
    SmolLM2 size shares one tokenizer)."""
    return "smollm2" in str(target.model).lower()


def tokenizer(wait: bool = False) -> Any | None:
    """The loaded tokenizer, or None; ``wait`` (off any event loop) lets a first load finish."""
    if _tokenizer is None:
        preload(wait=wait)
    return _tokenizer
