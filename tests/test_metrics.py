"""Metrics on hand-built timelines: one definition each, no backend involved."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from playground import metrics
from playground.events import TokenSource
from playground.metrics import Delta, Timeline


def timeline(sent: float | None, deltas: list[tuple[float, int, int | None]], ended: float | None = None,
             started: float = 0.0) -> Timeline:
    return Timeline(started=started, sent=sent, deltas=[Delta(at, chars, tokens) for at, chars, tokens in deltas],
                    ended=ended)


def test_ttft_ignores_empty_and_role_only_deltas() -> None:
    # the role-only chunk and an empty-choices chunk arrive as zero-character deltas
    t = timeline(1.0, [(1.05, 0, None), (1.10, 0, None), (1.50, 3, None), (1.60, 3, None)], ended=1.7)
    m = metrics.summarize(t, 2, "server")
    assert m.ttft_s == pytest.approx(0.50)
    assert m.e2e_s == pytest.approx(0.70)
    assert m.prep_s == pytest.approx(1.0)


def test_decode_speed_is_not_diluted_by_ttft() -> None:
    # 11 tokens, first at +2.0 s (a slow TTFT), then one every 0.1 s
    t = timeline(0.0, [(2.0 + 0.1 * i, 2, 1) for i in range(11)], ended=3.0)
    m = metrics.summarize(t, 11, "counted")
    assert m.decode_tokens_per_s == pytest.approx(10.0)  # (11 - 1) / (3.0 - 2.0), not 11 / 3.0
    assert m.ttft_s == pytest.approx(2.0)


def test_decode_tokens_per_s_formula_and_none_cases() -> None:
    assert metrics.decode_tokens_per_s(5, 1.0, 3.0) == pytest.approx(2.0)
    assert metrics.decode_tokens_per_s(None, 1.0, 3.0) is None
    assert metrics.decode_tokens_per_s(1, 1.0, 3.0) is None  # one token has no decode interval
    assert metrics.decode_tokens_per_s(5, None, 3.0) is None
    assert metrics.decode_tokens_per_s(5, 3.0, 3.0) is None  # all at once: no rate to speak of


def test_decode_drops_exact_tokens_that_came_before_any_text() -> None:
    # a backend that counts exactly: 2 empty tokens (e.g. special), then 5 text tokens 0.25 s apart
    deltas = [(0.1, 0, 1), (0.2, 0, 1)] + [(1.0 + 0.25 * i, 1, 1) for i in range(5)]
    m = metrics.summarize(timeline(0.0, deltas, ended=2.0), 7, "counted")
    assert m.decode_tokens_per_s == pytest.approx(4.0)  # (5 - 1) / 1.0


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
    ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
    ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
    ([4.0, 1.0, 3.0, 2.0], 95, 3.85),  # unsorted input, numpy's linear interpolation
    ([7.0], 95, 7.0),
])
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert metrics.percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_none() -> None:
    assert metrics.percentile([], 50) is None


@pytest.mark.parametrize(("server", "counted", "estimated", "expected"), [
    (10, 9, 8, (10, "server")),
    (None, 9, 8, (9, "counted")),
    (None, None, 8, (8, "estimated")),
    (None, None, None, (None, None)),
    (0, 9, 8, (0, "server")),  # zero from the server is an answer, not a missing value
])
def test_pick_tokens_priority(server: int | None, counted: int | None, estimated: int | None,
                              expected: tuple[int | None, str | None]) -> None:
    assert metrics.pick_tokens(server, counted, estimated) == expected


def test_itl_per_token_when_each_event_is_one_token() -> None:
    t = timeline(0.0, [(0.5, 2, 1), (0.6, 2, 1), (0.8, 2, 1), (1.1, 2, 1)], ended=1.2)
    m = metrics.summarize(t, 4, "counted")
    assert m.itl_basis == "token"
    assert m.itl_p50_s == pytest.approx(0.2)
    assert m.itl_p95_s == pytest.approx(0.29)


def test_itl_per_chunk_when_events_bundle_tokens() -> None:
    t = timeline(0.0, [(0.5, 9, 3), (0.6, 9, 3), (0.7, 4, 1)], ended=0.8)
    m = metrics.summarize(t, 7, "counted")
    assert m.itl_basis == "chunk"
    assert m.itl_p50_s == pytest.approx(0.1)


def test_itl_per_chunk_when_token_counts_are_unknown() -> None:
    t = timeline(0.0, [(0.5, 3, None), (0.7, 3, None)], ended=0.8)
    assert metrics.summarize(t, 2, "server").itl_basis == "chunk"


def test_nothing_sent_or_no_text_yet() -> None:
    m = metrics.summarize(timeline(None, []), None, None)
    assert (m.ttft_s, m.e2e_s, m.prep_s, m.decode_tokens_per_s) == (None, None, None, None)
    assert (m.itl_p50_s, m.itl_p95_s, m.itl_basis) == (None, None, None)

    waiting = metrics.summarize(timeline(1.0, [(1.2, 0, None)]), None, None, now=3.0)
    assert waiting.ttft_s is None  # a role chunk is not a first token
    assert waiting.e2e_s == pytest.approx(2.0)  # live: up to now
    assert waiting.itl_basis is None


def test_single_token_has_ttft_but_no_rate_or_gaps() -> None:
    m = metrics.summarize(timeline(0.0, [(0.3, 5, 1)], ended=0.4), 1, "counted")
    assert m.ttft_s == pytest.approx(0.3)
    assert m.decode_tokens_per_s is None
    assert m.itl_p50_s is None and m.itl_basis is None


def test_ended_wins_over_now() -> None:
    m = metrics.summarize(timeline(0.0, [(0.3, 5, 1)], ended=0.4), 1, "counted", now=9.0)
    assert m.e2e_s == pytest.approx(0.4)


@pytest.mark.parametrize("source", typing.get_args(TokenSource) + (None,))
def test_tokens_text_marks_every_estimate_and_only_estimates(source: TokenSource | None) -> None:
    shown = metrics.tokens_text(12, source)
    assert shown == ("~12" if source in ("chunks", "estimated") else "12")
    assert metrics.tokens_text(None, source) == "–"


def test_the_estimate_mark_is_written_once() -> None:
    """The "~N" shape lives in metrics.tokens_text; the columns, the report and a cut stream's error use it."""
    root = Path(__file__).resolve().parents[1] / "playground"
    writers = [str(path.relative_to(root)) for path in root.rglob("*.py")
               if re.search(r"""f["']~\{|["']~["'] if""", path.read_text(encoding="utf-8"))]
    assert writers == ["metrics.py"]
    from playground import report, ui_format

    assert ui_format.tokens_text is report.tokens_text is metrics.tokens_text
