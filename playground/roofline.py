"""The local roofline: decoding on a CPU reads every weight once a token, so memory bandwidth caps the
decode rate at ``bandwidth / bytes read per token``. A measured rate is shown as a share of that
ceiling ("61 % of this machine's ceiling").

The bandwidth is measured once per process: numpy copies a 256 MiB buffer (well past any last-level
cache) a few times and the best pass counts, reads plus writes. The bytes per token are the size of
the model file actually loaded (its weights, as stored: quantised blocks stay quantised on llama.cpp
and OpenVINO; transformers on a GGUF dequantizes to float32, 8 times the Q4 file, so its ceiling uses
that). Both are estimates of a ceiling, not of a speed: the ratio says how much headroom is left.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playground.catalog import Target

BUFFER_BYTES = 256 << 20
PASSES = 4
DEQUANTIZED = {"transformers": 8.0}  # how much bigger than the file the weights are once loaded


_bandwidth: float | None = None
_measuring = threading.Lock()


def bandwidth_gb_s() -> float:
    """Memory bandwidth in GB/s (bytes read plus written by a large copy), measured once per process:
    ~0.3 s of numpy, so never call it on an event loop (``known_bandwidth`` never measures)."""
    global _bandwidth
    with _measuring:
        if _bandwidth is None:
            _bandwidth = _measure()
        return _bandwidth


def known_bandwidth() -> float | None:
    """The bandwidth if it was measured already; never measures."""
    return _bandwidth


def _measure() -> float:
    import numpy as np

    source = np.ones(BUFFER_BYTES // 8)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(PASSES):
        started = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return 2 * BUFFER_BYTES / best / 1e9


@dataclass(frozen=True)
class Ceiling:
    bandwidth_gb_s: float
    bytes_per_token: float

    @property
    def tokens_per_s(self) -> float:
        return self.bandwidth_gb_s * 1e9 / self.bytes_per_token

    def share(self, measured_tokens_per_s: float) -> float:
        return measured_tokens_per_s / self.tokens_per_s

    def describe(self, measured_tokens_per_s: float) -> str:
        return (f"{self.share(measured_tokens_per_s) * 100:.0f} % of this machine's ceiling "
                f"({self.tokens_per_s:.0f} tok/s: {self.bandwidth_gb_s:.1f} GB/s measured ÷ "
                f"{self.bytes_per_token / 1e6:.0f} MB of weights a token)")


def ceiling(backend: str, model_file_bytes: int, dequantized: bool = True) -> Ceiling:
    factor = DEQUANTIZED.get(backend, 1.0) if dequantized else 1.0
    return Ceiling(bandwidth_gb_s(), model_file_bytes * factor)


def model_bytes(target: Target) -> int | None:
    """The size of the weights a local target loads: the files it actually loads (for the bundled
    ONNX model, the int4 files the playground built from the GGUF)."""
    from playground import environment

    files = environment.model_files(target)
    return sum(p.stat().st_size for p in files) or None


def for_target(target: Target) -> Ceiling | None:
    """This machine's ceiling for a local target (None for a remote one, or weights not found).
    Measures the bandwidth the first time: call it in a thread."""
    from playground import environment
    from playground.backends import local_backends

    if target.backend not in local_backends():
        return None
    files = environment.model_files(target)
    size = sum(p.stat().st_size for p in files)
    if not size:
        return None
    # transformers dequantizes a GGUF to float32; safetensors load as stored
    return ceiling(target.backend, size, dequantized=any(p.suffix == ".gguf" for p in files))
