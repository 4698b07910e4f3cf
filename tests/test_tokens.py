"""The token estimate's tokenizer: missing before the ONNX build, it is looked for again every
``RETRY_S`` (never cached as missing for good, never reloaded on every call)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from playground import models, tokens


def write_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tokenizer = Tokenizer(WordLevel({"[UNK]": 0, "red": 1, "green": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    folder.mkdir(parents=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    models.mark_complete(folder, "test")


def test_a_missing_tokenizer_is_looked_for_again_after_retry_s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAYGROUND_CACHE", str(tmp_path / "cache"))
    now = [1000.0]
    monkeypatch.setattr(tokens, "time", SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(tokens, "RETRY_S", 30.0)
    monkeypatch.setattr(tokens, "_tokenizer", None)
    monkeypatch.setattr(tokens, "_loading", False)
    monkeypatch.setattr(tokens, "_last_try", float("-inf"))
    text = "red green red green red green"  # 29 characters, 6 words

    tokens.preload(wait=True)  # no ONNX cache yet
    assert tokens._tokenizer is None and tokens.estimate_tokens(text) == 8  # about 4 characters a token

    write_tokenizer(models.bundled_onnx_dir())  # the ONNX build finishes
    now[0] += tokens.RETRY_S - 1
    tokens.preload(wait=True)
    assert tokens._tokenizer is None, "looked again before RETRY_S"

    now[0] += 2
    tokens.preload(wait=True)
    assert tokens._tokenizer is not None and tokens.estimate_tokens(text) == 6
