"""Metrics as pure functions over ``time.perf_counter()`` timelines. One definition each.

- TTFT: from the request being sent to the first non-empty text.
- E2E: from the request being sent to the end of the stream.
- Output tokens: the server's ``usage``, else an exact local count, else a tokenizer
  estimate (shown with "~").
- Decode speed: (tokens - 1) / (time of last token - time of first token); never
  diluted by TTFT. The first token's own time is TTFT's business.
- Inter-token latency p50 / p95: gaps between consecutive tokens where each event is
  exactly one token; otherwise gaps between chunks, labelled "per chunk".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

from playground.events import TokenSource


@dataclass
class Delta:
    at: float
    chars: int
    tokens: int | None  # exact tokens in this event, when the backend knows


@dataclass
class Timeline:
    """What the runner records for one column."""

    started: float  # the run began (queueing and loading happen before t_sent)
    sent: float | None = None
    deltas: list[Delta] = field(default_factory=list)
    ended: float | None = None


@dataclass(frozen=True)
class Metrics:
    ttft_s: float | None
    e2e_s: float | None
    prep_s: float | None  # queueing, loading, building: before the request was sent
    output_tokens: int | None
    tokens_source: TokenSource | None
    decode_tokens_per_s: float | None
    itl_p50_s: float | None
    itl_p95_s: float | None
    itl_basis: Literal["token", "chunk"] | None


def ttft_s(sent: float | None, first_text_at: float | None) -> float | None:
    if sent is None or first_text_at is None:
        return None
    return first_text_at - sent


def e2e_s(sent: float | None, ended: float | None) -> float | None:
    if sent is None or ended is None:
        return None
    return ended - sent


def decode_tokens_per_s(tokens: int | None, first_at: float | None, last_at: float | None) -> float | None:
    """(n - 1) tokens decoded between the first token and the last one."""
    if tokens is None or tokens < 2 or first_at is None or last_at is None or last_at <= first_at:
        return None
    return (tokens - 1) / (last_at - first_at)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100), as numpy's default."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def gaps(times: Sequence[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def pick_tokens(
    server: int | None, counted: int | None, estimated: int | None
) -> tuple[int | None, TokenSource | None]:
    if server is not None:
        return server, "server"
    if counted is not None:
        return counted, "counted"
    if estimated is not None:
        return estimated, "estimated"
    return None, None


ESTIMATES: frozenset[str] = frozenset({"chunks", "estimated"})


def tokens_text(count: int | None, source: str | None) -> str:
    """A token count as shown everywhere: an estimate (chunks, tokenizer) gets a "~"; none is "–"."""
    if count is None:
        return "–"
    return f"~{count}" if source in ESTIMATES else str(count)


def first_text_at(timeline: Timeline) -> float | None:
    return next((d.at for d in timeline.deltas if d.chars > 0), None)


def summarize(timeline: Timeline, tokens: int | None, source: TokenSource | None, now: float | None = None) -> Metrics:
    """All metrics for a column; ``now`` gives live figures for a stream still running."""
    first = first_text_at(timeline)
    ended = timeline.ended if timeline.ended is not None else now
    # decode runs from the first text-bearing token to the last token of any kind
    stream = [d for d in timeline.deltas if first is not None and d.at >= first]
    last = stream[-1].at if stream else None
    exact = bool(stream) and all(d.tokens == 1 for d in stream)
    times = [d.at for d in stream if exact or d.chars > 0]
    itl = gaps(times)
    return Metrics(
        ttft_s=ttft_s(timeline.sent, first),
        e2e_s=e2e_s(timeline.sent, ended),
        prep_s=(timeline.sent - timeline.started) if timeline.sent is not None else None,
        output_tokens=tokens,
        tokens_source=source,
        decode_tokens_per_s=decode_tokens_per_s(_decode_count(tokens, timeline, first), first, last),
        itl_p50_s=percentile(itl, 50),
        itl_p95_s=percentile(itl, 95),
        itl_basis=("token" if exact else "chunk") if itl else None,
    )


def _decode_count(tokens: int | None, timeline: Timeline, first: float | None) -> int | None:
    """Tokens from the first text on. Exact counts drop tokens that came before any text."""
    if tokens is None or first is None:
        return tokens
    before = [d for d in timeline.deltas if d.at < first]
    if before and all(d.tokens is not None for d in before):
        return tokens - sum(d.tokens or 0 for d in before)
    return tokens
