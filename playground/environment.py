"""What produced a set of numbers: the playground's version, Python and library versions, the
machine, and per target the model file or the endpoint. Benchmark exports carry it, so that two
exports can be compared without guessing what differed."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from playground import models
from playground.backends import http_backends

if TYPE_CHECKING:
    from playground.catalog import Target

LIBRARIES = ("gradio", "openai", "ollama", "aiohttp", "uvloop", "transformers", "torch", "onnxruntime-genai",
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
    """The model files a local target loads (names, size, quantisation, a short hash) or the endpoint."""
    options = target.options
    base_url = getattr(options, "base_url", None) or (
        f"${options.base_url_env}" if getattr(options, "base_url_env", None) else None)  # type: ignore[attr-defined]
    if base_url is not None or target.backend in http_backends():
        return {"id": target.id, "backend": target.backend, "model": target.model, "endpoint": base_url}
    facts: dict[str, Any] = {"id": target.id, "backend": target.backend, "model": target.model}
    files = model_files(target)
    if files:
        facts.update(file=", ".join(p.name for p in files),
                     size_mb=round(sum(p.stat().st_size for p in files) / 1024**2, 1),
                     quantisation=_quantisation(files[0]),
                     fingerprint=fingerprint(str(files[0])) if len(files) == 1 else _combined(files))
    if target.backend == "onnx" and getattr(options, "source", None) == "bundled":
        facts["built_from"] = models.BUNDLED_GGUF  # the playground quantised this GGUF to int4 ONNX
    return facts


WEIGHT_PATTERNS = ("*.gguf", "*.onnx", "*.onnx.data", "*.onnx_data", "*.safetensors", "*.bin")


def model_files(target: Target) -> list[Path]:
    """The weight files a local target actually loads, as they are on disk now ([] when not known or
    not there yet): for the bundled ONNX target, the int4 files built from the bundled GGUF."""
    if target.backend == "onnx" and getattr(target.options, "source", None) == "bundled":
        folder = models.bundled_onnx_dir()
        return _weights_in(folder) if models.is_complete(folder) else []
    path = model_file(target)
    if path is None:
        return []
    if path.is_dir():
        return _weights_in(path)
    return [path] if path.is_file() else []


def _weights_in(folder: Path) -> list[Path]:
    return sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file()})


def model_file(target: Target) -> Path | None:
    """The file (or folder) a local target loads: bundled, a path, or its copy in the HF cache."""
    options = target.options
    gguf = getattr(options, "gguf_file", None)
    source = getattr(options, "source", None)
    if source == "bundled":
        folder = models.bundled_dir()
        return folder / (gguf or models.BUNDLED_GGUF) if folder else None
    if source == "hub":
        return hub_path(target.model, gguf, getattr(options, "hub_subfolder", None))
    path = Path(target.model).expanduser()  # a path, the default
    return path / gguf if gguf else path


def hub_path(repo: str, filename: str | None, subfolder: str | None) -> Path | None:
    """Where the backends' ``hf_hub_download`` / ``snapshot_download`` left the file or folder: the
    cached snapshot, found offline (None when it is not downloaded yet)."""
    try:
        from huggingface_hub import snapshot_download

        patterns = [filename] if filename else [f"{subfolder}/*"] if subfolder else None
        root = Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache, no huggingface_hub, a bad name: no facts
        return None
    folder = root / subfolder if subfolder else root
    return folder / filename if filename else folder


QUANTISATION = re.compile(r"(?<![A-Za-z0-9])(IQ\d\w*|Q\d\w*|BF16|F16|F32)(?=[.-]|$)", re.IGNORECASE)


def _quantisation(path: Path) -> str | None:
    """From the file's name (``….Q4_1.gguf``, ``…-Q4_K_M.gguf``), else its folder's (``…-int4-cpu``)."""
    found = QUANTISATION.findall(path.name)
    if found:
        return found[-1]
    for part in reversed(path.parent.name.replace("_", "-").split("-")):
        if part.lower() in ("int4", "int8", "fp16", "fp32", "bf16"):
            return part
    return None


def _combined(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{fingerprint(str(path))};".encode())
    return digest.hexdigest()[:16]


MACHINE_COLUMNS = ("playground", "git_revision", "python", "cpu", "cores", "memory_gb", "os")
MODEL_COLUMNS = ("file", "size_mb", "quantisation", "fingerprint", "built_from", "endpoint")


def export_columns(env: dict[str, Any], facts: dict[str, Any] | None) -> dict[str, Any]:
    """The environment as flat cells for a CSV row: the machine (``env_…``), each library's version
    (``lib_…``) and the target's model files or endpoint (``model_…``)."""
    libraries = env.get("libraries") or {}
    return {**{f"env_{k}": env.get(k) for k in MACHINE_COLUMNS},
            **{f"lib_{name}": libraries.get(name) for name in LIBRARIES},
            **{f"model_{k}": (facts or {}).get(k) for k in MODEL_COLUMNS}}


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
