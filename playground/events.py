"""Frozen stream events that every backend yields.

A backend knows nothing of the UI or of timing policy. Local backends may stamp an
event with ``at`` (a ``time.perf_counter()`` reading taken where the token was
produced); otherwise the runner stamps it on arrival.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from playground.errors import ErrorKind


# server: the server's usage; counted: exact local count; chunks: one token per streamed chunk,
# an estimate until the server confirms it; estimated: a tokenizer's estimate
TokenSource = Literal["server", "counted", "chunks", "estimated"]


@dataclass(frozen=True)
class Progress:
    """Work before the request is sent (loading, building, downloading)."""

    message: str


@dataclass(frozen=True)
class RequestSent:
    """The request has just been handed to the server or the model: the clock starts."""

    at: float | None = None


@dataclass(frozen=True)
class TextDelta:
    """New text. ``tokens`` is the exact number of tokens it holds, when known."""

    text: str
    tokens: int | None = None
    at: float | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None
    completion_tokens: int
    source: TokenSource
    # prompt tokens the server took from its own cache instead of evaluating them (OpenAI's
    # usage.prompt_tokens_details.cached_tokens): its TTFT leaves their evaluation out
    cached_prompt_tokens: int | None = None


@dataclass(frozen=True)
class ServerTimings:
    """Timings the server or engine reports about itself."""

    decode_tokens_per_s: float | None = None
    prompt_eval_s: float | None = None
    load_s: float | None = None
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    total_s: float | None = None
    threads: int | None = None  # CPU threads the engine used (llama.cpp)


@dataclass(frozen=True)
class ClockReport:
    """From a process that stamped this column's events: the worst lag of its loop meanwhile."""

    worst_lag_s: float


@dataclass(frozen=True)
class Notice:
    """Something the user must be told about this column (e.g. a retry, an image not sent)."""

    message: str


@dataclass(frozen=True)
class Finished:
    reason: str
    at: float | None = None


@dataclass(frozen=True)
class Failed:
    kind: ErrorKind
    message: str
    retry_after: float | None = None


Event = Union[Progress, RequestSent, TextDelta, Usage, ServerTimings, ClockReport, Notice, Finished, Failed]
