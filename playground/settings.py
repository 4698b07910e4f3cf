"""Every environment variable the playground reads, read here (the README's settings table lists
them). Values are read when asked for, so a test or a long-running app sees the current one.

A value that cannot be used raises ``SettingsError`` naming the variable; the entry points
(``app.py``, ``python -m playground``) check them all at start-up (``problems()``) and stop with
those lines. Library code never exits the process. Keys are the one exception to "read here":
``secrets`` reads them, so that their values pass through one module that redacts them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, TypeVar

MAX_COLUMNS = 6
QUEUE_POLL_S = 0.01  # how often Gradio's queue is polled (its default: 1 ms; see ui._quiet_queue)
PROGRESS_POLL_S = 0.05  # its progress updates (its default: 10 ms)
N = TypeVar("N", int, float)


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the variable and the value."""


def env(name: str) -> str | None:
    """A variable's value, stripped; None when it is unset or blank (also a variable a catalog
    names: a base URL, a model name)."""
    value = os.environ.get(name, "").strip()
    return value or None


def _number(name: str, default: N, kind: type[N], low: float, high: float | None = None) -> N:
    raw = env(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise SettingsError(f"{name} must be {what} (got {raw!r})") from None
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        bounds = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise SettingsError(f"{name} must be {bounds} (got {raw})")
    return value


def _flag(name: str) -> bool | None:
    """``1`` on, ``0`` off, unset None; anything else is refused."""
    raw = env(name)
    if raw is None:
        return None
    if raw not in ("0", "1"):
        raise SettingsError(f"{name} must be 0 or 1 (got {raw!r})")
    return raw == "1"


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env(name) or default
    if raw not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)} (got {raw!r})")
    return raw


# --- the app ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    host: str | None
    port: int | None
    columns: int | None
    default_targets: list[str]
    concurrency: int
    catalog: str | None


def from_env() -> Settings:
    targets = env("PLAYGROUND_DEFAULT_TARGETS") or ""
    return Settings(
        # None lets Gradio use GRADIO_SERVER_NAME / PORT (Hugging Face Spaces set those).
        host=env("PLAYGROUND_HOST"),
        port=_number("PLAYGROUND_PORT", 0, int, 1, 65535) or None,
        columns=_number("PLAYGROUND_COLUMNS", 0, int, 1, MAX_COLUMNS) or None,
        default_targets=[t.strip() for t in targets.split(",") if t.strip()],
        concurrency=_number("PLAYGROUND_CONCURRENCY", 32, int, 1, 1000),
        catalog=catalog_file(),
    )


def catalog_file() -> str | None:
    return env("PLAYGROUND_CATALOG")


def cache_dir() -> str | None:
    """Where built and downloaded models go: PLAYGROUND_CACHE, else under XDG_CACHE_HOME (None: ~/.cache)."""
    explicit = env("PLAYGROUND_CACHE")
    if explicit:
        return explicit
    base = env("XDG_CACHE_HOME")
    return os.path.join(base, "phi-playground") if base else None


# --- public mode ------------------------------------------------------------------------------------
def public_mode() -> bool | None:
    """PLAYGROUND_PUBLIC: 1 on, 0 off; None: on where SPACE_ID says this is a Space."""
    return _flag("PLAYGROUND_PUBLIC")


def on_space() -> bool:
    return env("SPACE_ID") is not None


def rate() -> str | None:
    return env("PLAYGROUND_RATE")


def _rate_checked() -> object:
    from playground.public import parse_rate  # it knows the format ("6/min", "off")

    raw = rate()
    return parse_rate(raw) if raw else None


def public_targets() -> frozenset[str] | None:
    listed = env("PLAYGROUND_PUBLIC_TARGETS")
    return frozenset(t.strip() for t in listed.split(",") if t.strip()) if listed else None


def allow_private_urls() -> bool:
    return bool(_flag("PLAYGROUND_ALLOW_PRIVATE_URLS"))


# --- local models -----------------------------------------------------------------------------------
def local_slots() -> int:
    """How many generations may share one loaded model at once."""
    return _number("PLAYGROUND_LOCAL_SLOTS", 2, int, 1, 64)


def local_memory_gb() -> float | None:
    """The memory local models may hold together; None: a share of the machine's RAM."""
    return _number("PLAYGROUND_LOCAL_MEMORY_GB", 0.0, float, 0.1) or None


def session_capacity() -> int:
    """PLAYGROUND_SESSIONS: how many browser sessions' state the app keeps (the least recently used
    goes first past it); Gradio's own default is 10,000."""
    return _number("PLAYGROUND_SESSIONS", 500, int, 10)


def queue_timeout_s() -> float:
    """How long a column may wait before its request is sent."""
    return _number("PLAYGROUND_QUEUE_TIMEOUT_S", 300.0, float, 1.0)


def model_hang_s() -> float:
    """How long a model process may send nothing while a request waits."""
    return _number("PLAYGROUND_MODEL_HANG_S", 60.0, float, 2.0)


def llamacpp_threads() -> int | None:
    return _number("PLAYGROUND_LLAMACPP_THREADS", 0, int, 1, 1024) or None


def llamacpp_extra_buffers() -> bool:
    return bool(_flag("PLAYGROUND_LLAMACPP_EXTRA_BUFFERS"))


# --- measurement ------------------------------------------------------------------------------------
def measure_process() -> str | None:
    """PLAYGROUND_MEASURE_PROCESS: 1 "process" (every HTTP stream), 0 "thread" (none), auto
    (by load); None: the app's own default."""
    raw = env("PLAYGROUND_MEASURE_PROCESS")
    if raw is None:
        return None
    chosen = {"1": "process", "0": "thread", "auto": "auto"}.get(raw)
    if chosen is None:
        raise SettingsError(f"PLAYGROUND_MEASURE_PROCESS must be 0, 1 or auto (got {raw!r})")
    return chosen


def measure_priority() -> str:
    return _choice("PLAYGROUND_MEASURE_PRIORITY", "realtime", ("realtime", "nice", "normal"))


def stall_trace() -> bool:
    return bool(_flag("PLAYGROUND_STALL_TRACE"))


# --- recorded runs ----------------------------------------------------------------------------------
def db_url() -> str | None:
    """PLAYGROUND_DB: a SQLAlchemy URL (postgresql://…, sqlite:///…) or a file path; None: the default
    file; "off": record nothing."""
    raw = env("PLAYGROUND_DB")
    if raw and "://" in raw and raw.split("://", 1)[0].split("+")[0] not in ("sqlite", "postgresql", "postgres"):
        raise SettingsError(f"PLAYGROUND_DB: use sqlite:///FILE, postgresql://… or a file path (got {raw.split('://')[0]}://…)")
    return raw


def keep_days() -> float:
    """PLAYGROUND_KEEP_DAYS: recorded runs older than this are pruned."""
    return _number("PLAYGROUND_KEEP_DAYS", 30.0, float, 0.01)


def keep_runs() -> int:
    """PLAYGROUND_KEEP_RUNS: the most recorded runs kept (the size cap); the oldest go first."""
    return _number("PLAYGROUND_KEEP_RUNS", 5000, int, 1)


# --- presenter --------------------------------------------------------------------------------------
def deck_file() -> str | None:
    """PLAYGROUND_DECK: a presenter's prompt deck (YAML), stepped through with ?presenter=1."""
    return env("PLAYGROUND_DECK")


def _deck_checked() -> object:
    from playground import deck  # it knows the format

    path = deck_file()
    if not path:
        return None
    try:
        return deck.load(path)
    except deck.DeckError as exc:
        raise SettingsError(f"PLAYGROUND_DECK: {exc}") from None


# --- arena ------------------------------------------------------------------------------------------
def arena_targets() -> list[str] | None:
    """PLAYGROUND_ARENA_TARGETS: the arena's pool (target ids); None: every target that can run now."""
    listed = env("PLAYGROUND_ARENA_TARGETS")
    return [t.strip() for t in listed.split(",") if t.strip()] if listed else None


def arena_speed() -> bool:
    """PLAYGROUND_ARENA_SPEED=1: the arena shows each answer's speed before the vote (it can give it away)."""
    return bool(_flag("PLAYGROUND_ARENA_SPEED"))


# --- servers ----------------------------------------------------------------------------------------
PROXY_VARIABLES = tuple(f"{scheme}_proxy" for scheme in ("http", "https", "ws", "wss", "no"))


def proxy_settings() -> tuple[str | None, ...]:
    """HTTP(S)_PROXY, NO_PROXY and the like (lower case first, as urllib reads them): what the
    OpenAI-compatible backend's proxy choice per origin depends on (``openai_compat._proxy``)."""
    return tuple(os.environ.get(name, os.environ.get(name.upper())) for name in PROXY_VARIABLES)


def ollama_host() -> str | None:
    return env("OLLAMA_HOST")


CHECKED: list[Callable[[], object]] = [
    from_env, public_mode, _rate_checked, public_targets, allow_private_urls, local_slots, local_memory_gb, session_capacity,
    queue_timeout_s,
    model_hang_s, llamacpp_threads, llamacpp_extra_buffers, measure_process, measure_priority, stall_trace,
    db_url, keep_days, keep_runs, arena_targets, arena_speed, _deck_checked,
]


def problems() -> list[str]:
    """Every setting that cannot be used, one line each (the entry points stop on any)."""
    found = []
    for read in CHECKED:
        try:
            read()
        except SettingsError as exc:
            found.append(str(exc))
    return found
