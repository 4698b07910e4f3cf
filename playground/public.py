"""Public mode: what a Space open to anyone offers, and how often a visitor may run it.

On (``PLAYGROUND_PUBLIC=1``, or by default where ``SPACE_ID`` says this is a Hugging Face Space),
the app offers only targets that download nothing into the server (the bundled model's and HTTP
targets), never one that runs a model's own code (``trust_remote_code``), lets a target fill at
most two columns of a run, and limits runs per browser session and per client address
(``PLAYGROUND_RATE``, default ``6/min``): everyone spends the owner's keys and cores.
"""

from __future__ import annotations

import collections
import math
import re
import threading
import time
from dataclasses import dataclass, field

from playground import settings
from playground.backends import http_backends
from playground.catalog import Catalog, Target

DEFAULT_RATE = "6/min"
MAX_SAME_TARGET = 2
UNITS_S = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
UNIT_WORDS = {1: "second", 60: "minute", 3600: "hour"}


class PolicyError(settings.SettingsError):
    """A setting that cannot be used, naming the variable and what it got."""


@dataclass(frozen=True)
class Rate:
    runs: int
    per_s: float

    def describe(self) -> str:
        return f"{self.runs} run{'s' if self.runs != 1 else ''} a {UNIT_WORDS.get(int(self.per_s), f'{self.per_s:g} s')}"


def parse_rate(text: str) -> Rate | None:
    """``6/min``, ``100/hour``, ``2/30s``; ``off`` or ``0`` for none."""
    text = text.strip().lower()
    if text in ("off", "0", "none"):
        return None
    match = re.fullmatch(r"(\d+)\s*/\s*(\d*\.?\d*)\s*([a-z]+)", text)
    if not match or match.group(3) not in UNITS_S or int(match.group(1)) < 1:
        raise PolicyError(f"PLAYGROUND_RATE must look like 6/min, 100/hour or 2/30s (got {text!r})")
    try:
        count = float(match.group(2)) if match.group(2) else 1.0
    except ValueError:
        count = 0.0
    if count <= 0:
        raise PolicyError(f"PLAYGROUND_RATE needs a window longer than zero (got {text!r})")
    return Rate(int(match.group(1)), count * UNITS_S[match.group(3)])


@dataclass(frozen=True)
class Policy:
    public: bool = False
    rate: Rate | None = None
    targets: frozenset[str] | None = None  # PLAYGROUND_PUBLIC_TARGETS: exactly these, in public mode
    trust_forwarded_for: bool = False  # behind the Space's proxy, the client's address is in X-Forwarded-For

    def refusal(self, target: Target) -> str | None:
        """Why ``target`` is not offered here; None when it is."""
        if not self.public:
            return None
        if getattr(target.options, "trust_remote_code", None):
            return f"{target.id} is not offered on this public Space: it runs the model's own code (trust_remote_code)"
        if self.targets is not None:
            return None if target.id in self.targets else \
                f"{target.id} is not offered on this public Space (not in PLAYGROUND_PUBLIC_TARGETS)"
        if target.backend in http_backends() or getattr(target.options, "source", None) == "bundled":
            return None
        download_gb = getattr(target.options, "download_gb", None)
        size = f" {download_gb:g} GB" if download_gb else ""
        return (f"{target.id} is not offered on this public Space: it downloads{size} into the server "
                "(the owner can offer it with PLAYGROUND_PUBLIC_TARGETS)")

    def offered(self, catalog: Catalog) -> Catalog:
        targets = [t for t in catalog.targets if self.refusal(t) is None]
        ids = {t.id for t in targets}
        return Catalog(targets=targets, defaults=[d for d in catalog.defaults if d in ids])

    def describe(self) -> str:
        if not self.public:
            return "Private mode: every target in the catalog is offered, with no run limit."
        limit = f" Runs are limited to {self.rate.describe()} per visitor." if self.rate else ""
        return ("**Public mode**: only targets that download nothing into this server are offered, and a "
                f"target may fill at most {MAX_SAME_TARGET} columns.{limit}")


def from_env() -> Policy:
    on_space = settings.on_space()
    chosen = settings.public_mode()
    public = chosen if chosen is not None else on_space
    rate_text = settings.rate()
    rate = parse_rate(rate_text) if rate_text else (parse_rate(DEFAULT_RATE) if public else None)
    return Policy(public=public, rate=rate, targets=settings.public_targets(), trust_forwarded_for=on_space)


def same_target_refusal(policy: Policy, target_ids: list[str]) -> str | None:
    if not policy.public:
        return None
    counts = collections.Counter(target_ids)
    for target_id, count in counts.items():
        if count > MAX_SAME_TARGET:
            return (f"{target_id} is in {count} columns; on a public Space a target may fill at most "
                    f"{MAX_SAME_TARGET}")
    return None


@dataclass
class Quota:
    """Runs per window per key (a session, an address), a sliding window; thread-safe."""

    rate: Rate
    clock: object = field(default=time.monotonic)
    _runs: dict[str, collections.deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _now(self) -> float:
        return self.clock()  # type: ignore[operator]

    def _recent(self, key: str, now: float, keep: bool = True) -> collections.deque[float]:
        runs = self._runs.setdefault(key, collections.deque()) if keep else self._runs.get(key, collections.deque())
        while runs and runs[0] <= now - self.rate.per_s:
            runs.popleft()
        return runs

    def left(self, keys: list[str]) -> int:
        with self._lock:
            now = self._now()
            return min(self.rate.runs - len(self._recent(k, now, keep=False)) for k in keys)

    def take(self, keys: list[str], cost: int = 1) -> float | None:
        """Count ``cost`` runs (a benchmark's repeats and warm-ups) for every key; or, when any key would
        go over its limit, the seconds until it would not (``math.inf``: more than the limit itself)."""
        with self._lock:
            now = self._now()
            waits = []
            for key in keys:
                runs = self._recent(key, now)
                over = len(runs) + cost - self.rate.runs
                if over > 0:
                    waits.append(math.inf if over > len(runs) else runs[over - 1] + self.rate.per_s - now)
            if waits:
                return max(waits)
            for key in keys:
                self._runs[key].extend([now] * cost)
            if len(self._runs) > 10_000:  # forget keys with nothing in their window
                for key in [k for k, runs in self._runs.items() if not self._recent(k, now)]:
                    del self._runs[key]
            return None

    def refusal(self, wait_s: float) -> str:
        return (f"Run limit reached: {self.rate.describe()} per visitor on this public Space, and as many per "
                f"network address (visitors behind one share them). The next run is allowed in {math.ceil(wait_s)} s.")

    def status(self, keys: list[str]) -> str:
        left = max(0, self.left(keys))
        unit = UNIT_WORDS.get(int(self.rate.per_s))
        window = f"this {unit}" if unit else f"in {self.rate.per_s:g} s"
        return f"{left} of {self.rate.runs} runs left {window}"
