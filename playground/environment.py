"""What produced a set of numbers: the playground's version, Python and library versions, the
machine, and per target the model file or the endpoint. Benchmark exports carry it, so that two
exports can be compared without guessing what differed."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from playground import models
from playground.backends import http_backends

if TYPE_CHECKING:
    from playground.catalog import Target

LIBRARIES = ("gradio", "openai", "ollama", "aiohttp", "transformers", "torch", "onnxruntime-genai",
             "openvino-genai", "llama-cpp-python")
ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def machine() -> dict[str, Any]:
    """The software and the machine, once per process."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "playground": _version(),
        "git_revision": _git_revision(),
        "python": platform.python_version(),
        "libraries": versions,
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "os": f"{platform.system()} {platform.release()}",
    }


def target_facts(target: Target) -> dict[str, Any]:
    """The model file a local target loads (name, size, quantisation, a short hash) or the endpoint."""
    options = target.options
    base_url = getattr(options, "base_url", None) or (
        f"${options.base_url_env}" if getattr(options, "base_url_env", None) else None)  # type: ignore[attr-defined]
    if base_url is not None or target.backend in http_backends():
        return {"id": target.id, "backend": target.backend, "model": target.model, "endpoint": base_url}
    path = model_file(target)
    facts: dict[str, Any] = {"id": target.id, "backend": target.backend, "model": target.model}
    if path is not None and path.is_file():
        facts.update(file=path.name, size_mb=round(path.stat().st_size / 1024**2, 1),
                     quantisation=_quantisation(path.name), fingerprint=fingerprint(str(path)))
    return facts


def model_file(target: Target) -> Path | None:
    options = target.options
    gguf = getattr(options, "gguf_file", None)
    if getattr(options, "source", None) == "bundled":
        folder = models.bundled_dir()
        return folder / (gguf or models.BUNDLED_GGUF) if folder else None
    if getattr(options, "source", None) == "path":
        path = Path(target.model).expanduser()
        return path / gguf if gguf else path
    return None


def _quantisation(name: str) -> str | None:
    for part in reversed(Path(name).stem.split(".")):
        if part.upper().startswith(("Q", "F16", "F32", "BF16", "IQ")):
            return part
    return None


FINGERPRINT_BYTES = 8 << 20


@functools.cache
def fingerprint(path: str) -> str:
    """16 hex digits of SHA-256 over the file's size, its first and its last 8 MiB: tells two model
    files apart in milliseconds, where hashing a 7 GB file whole would hold up the results."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            handle.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            digest.update(handle.read(FINGERPRINT_BYTES))
    return digest.hexdigest()[:16]


def _version() -> str | None:
    try:
        return metadata.version("phi-playground")
    except metadata.PackageNotFoundError:  # run from a checkout: the project file says
        try:
            import tomllib  # Python 3.11+

            with open(ROOT / "pyproject.toml", "rb") as handle:
                return tomllib.load(handle).get("project", {}).get("version")
        except (ImportError, OSError, ValueError):  # TOMLDecodeError is a ValueError
            return None


def _git_revision() -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), None)
    except OSError:
        return platform.processor() or None


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
        return round(kb / 1024**2, 1)
    except (OSError, StopIteration, ValueError):
        return None
