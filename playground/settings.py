"""Settings from environment variables (one table of them in the README)."""

from __future__ import annotations

import os
from dataclasses import dataclass

MAX_COLUMNS = 6


def _int(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number (got {raw!r})") from None
    if not low <= value <= high:
        raise SystemExit(f"{name} must be between {low} and {high} (got {value})")
    return value


@dataclass(frozen=True)
class Settings:
    host: str | None
    port: int | None
    columns: int | None
    default_targets: list[str]
    concurrency: int
    catalog: str | None


def from_env() -> Settings:
    targets = os.environ.get("PLAYGROUND_DEFAULT_TARGETS", "")
    port = os.environ.get("PLAYGROUND_PORT")
    return Settings(
        # None lets Gradio use GRADIO_SERVER_NAME / PORT (Hugging Face Spaces set those).
        host=os.environ.get("PLAYGROUND_HOST") or None,
        port=_int("PLAYGROUND_PORT", 7860, 1, 65535) if port else None,
        columns=_int("PLAYGROUND_COLUMNS", 2, 1, MAX_COLUMNS) if os.environ.get("PLAYGROUND_COLUMNS") else None,
        default_targets=[t.strip() for t in targets.split(",") if t.strip()],
        concurrency=_int("PLAYGROUND_CONCURRENCY", 32, 1, 1000),
        catalog=os.environ.get("PLAYGROUND_CATALOG") or None,
    )
