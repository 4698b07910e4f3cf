"""Statistics over repeated runs: the figures benchmark mode reports for each metric.

Definitions (the README's *Benchmark mode* section repeats them):
- percentiles interpolate linearly between the two nearest ranks (numpy's default, "linear");
- ``std`` is the sample standard deviation (n - 1); None for one sample;
- the 95 % interval of the median is a percentile bootstrap: ``resamples`` resamples with
  replacement, each one's median, then the 2.5th and 97.5th percentiles of those medians. It is
  reproducible: the resampling uses its own generator, seeded.
- goodput (vLLM's term) is the share of runs that meet every objective the user set.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

RESAMPLES = 2000
SEED = 0


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    p50: float
    p90: float
    p95: float
    min: float
    max: float
    std: float | None
    ci_low: float  # the 95 % bootstrap interval of the median
    ci_high: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(values: Sequence[float | None], seed: int = SEED, resamples: int = RESAMPLES) -> Summary | None:
    """The statistics of the values that are there (None, a metric a run did not have, is left out)."""
    data = np.array([v for v in values if v is not None], dtype=float)
    if data.size == 0:
        return None
    p50, p90, p95 = np.percentile(data, [50, 90, 95])
    low, high = median_interval(data, seed, resamples)
    return Summary(n=int(data.size), mean=float(data.mean()), p50=float(p50), p90=float(p90), p95=float(p95),
                   min=float(data.min()), max=float(data.max()),
                   std=float(data.std(ddof=1)) if data.size > 1 else None, ci_low=low, ci_high=high)


def median_interval(data: np.ndarray, seed: int = SEED, resamples: int = RESAMPLES,
                    level: float = 0.95) -> tuple[float, float]:
    """A percentile-bootstrap interval of the median."""
    if data.size == 1:
        return float(data[0]), float(data[0])
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(data, size=(resamples, data.size), replace=True), axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Objectives:
    """Service-level objectives: a run meets them when its TTFT is at most ``ttft_ms`` and its
    decode rate at least ``tokens_per_s`` (either may be unset)."""

    ttft_ms: float | None = None
    tokens_per_s: float | None = None

    @classmethod
    def parse(cls, text: str) -> Objectives:
        """``ttft:500,tps:20`` (milliseconds; tokens a second); a bad part is refused by name."""
        values: dict[str, float] = {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            name, _, raw = part.partition(":")
            if name not in ("ttft", "tps"):
                raise ValueError(f"goodput: unknown objective {name!r} (use ttft:MS and tps:TOKENS_PER_S)")
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"goodput: {name} needs a number (got {raw!r})") from None
            if not math.isfinite(value):  # NaN passes `<= 0` and would meet every objective
                raise ValueError(f"goodput: {name} must be a finite number (got {raw.strip()})")
            if value <= 0:
                raise ValueError(f"goodput: {name} must be above 0 (got {raw})")
            if name in values:
                raise ValueError(f"goodput: {name} given twice (got {text.strip()!r})")
            values[name] = value
        return cls(values.get("ttft"), values.get("tps"))

    def met(self, ttft_s: float | None, tokens_per_s: float | None) -> bool:
        if self.ttft_ms is not None and (ttft_s is None or ttft_s * 1000 > self.ttft_ms):
            return False
        if self.tokens_per_s is not None and (tokens_per_s is None or tokens_per_s < self.tokens_per_s):
            return False
        return True

    def describe(self) -> str:
        parts = ([f"TTFT ≤ {self.ttft_ms:g} ms"] if self.ttft_ms is not None else []) + (
            [f"decode ≥ {self.tokens_per_s:g} tok/s"] if self.tokens_per_s is not None else [])
        return " and ".join(parts) or "none"


def goodput(runs: Sequence[tuple[float | None, float | None]], objectives: Objectives) -> float | None:
    """The share of runs, as (TTFT s, decode tok/s), that meet every objective."""
    if not runs:
        return None
    return sum(objectives.met(ttft, rate) for ttft, rate in runs) / len(runs)


def first_difference(texts: Sequence[str]) -> tuple[int, int] | None:
    """Where the first text that differs from the first one leaves it: (which text, at which
    character); None when all are the same."""
    if not texts:
        return None
    reference = texts[0]
    for index, text in enumerate(texts[1:], start=1):
        if text != reference:
            at = next((i for i, (a, b) in enumerate(zip(reference, text)) if a != b), min(len(reference), len(text)))
            return index, at
    return None
