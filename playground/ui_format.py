"""Pure functions from runner state to what the UI shows. No Gradio import here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from playground import secrets, settings
from playground.metrics import tokens_text

if TYPE_CHECKING:
    from playground.errors import Availability
    from playground.catalog import Target
    from playground.roofline import Ceiling
    from playground.runner import Column

STATUS_ICON = {"queued": "⏳", "loading": "⏳", "streaming": "▶", "done": "✓", "stopped": "■", "error": "✗"}


@dataclass
class Turn:
    """One exchange in a column's transcript. Only ``ok`` turns are sent back to the model."""

    user: str
    assistant: str
    ok: bool
    note: str = ""
    sent_user: str = ""  # what the model saw, when the transcript shows more (image names)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>&$])")
_URL = re.compile(r"https?://[^\s<>]*[^\s<>.,;:!?)\]}'\"]")  # as a link finder reads one: not its last stop


def plain(text: str) -> str:
    """Text that is not ours (a server's error message, which can be a whole HTML page) for a Markdown
    line: on one line, with every character Markdown or HTML would read escaped, so it shows as itself.
    A URL becomes an autolink (``<url>``): the page's Markdown links bare URLs, backslashes and all."""
    text = " ".join(text.split())
    out, at = [], 0
    for url in _URL.finditer(text):
        out += [_MARKDOWN_SPECIAL.sub(r"\\\1", text[at:url.start()]), f"<{url.group()}>"]
        at = url.end()
    return "".join(out) + _MARKDOWN_SPECIAL.sub(r"\\\1", text[at:])


def fmt_s(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def uncertainty_text(column: Column) -> str | None:
    """The error bar, where the stamps may be off by more than the runner's threshold."""
    if not column.timing_uncertain:
        return None
    return f"timing uncertain, ±{column.timing_bound_s * 1000:.0f} ms: the machine was busy"


def status_markdown(column: Column, now: float | None = None, ceiling: Ceiling | None = None) -> str:
    """The live status line: state, then TTFT, decode tok/s, tokens and E2E; at the end, a local
    target's decode rate against this machine's ceiling (``ceiling``, computed off the loop)."""
    m = column.metrics(now)
    state = column.status
    if column.status == "error":
        state = f"error: {plain(column.error or '')}"
    elif column.detail:
        state = f"{column.status}: {plain(column.detail)}"
    speed = "–" if m.decode_tokens_per_s is None else f"{m.decode_tokens_per_s:.1f}"
    source = f" ({m.tokens_source})" if m.tokens_source else ""
    parts = [
        f"{STATUS_ICON.get(column.status, '')} **{state}**",
        f"TTFT {fmt_s(m.ttft_s)} · decode {speed} tok/s · tokens {tokens_text(m.output_tokens, m.tokens_source)}"
        f"{source} · E2E {fmt_s(m.e2e_s)}",
    ]
    if ceiling is not None and m.decode_tokens_per_s and column.status == "done":
        parts.append(f"roofline: decode is {ceiling.describe(m.decode_tokens_per_s)}")
    chart = token_chart(column, now)
    if chart:
        parts.append(chart)
    uncertain = uncertainty_text(column)
    if uncertain:
        parts.append(f"⚠ {uncertain}")
    if m.prep_s is not None and m.prep_s >= 0.5:
        parts.append(f"before the request: {fmt_s(m.prep_s)} (queueing, loading)")
    server = column.server
    if server is not None:
        bits = []
        if server.decode_tokens_per_s is not None:
            bits.append(f"decode {server.decode_tokens_per_s:.1f} tok/s")
        if server.prompt_eval_s is not None:
            bits.append(f"prompt eval {fmt_s(server.prompt_eval_s)}")
        if server.load_s is not None:
            bits.append(f"model load {fmt_s(server.load_s)}")
        if server.output_tokens is not None:
            bits.append(f"{server.output_tokens} tokens")
        if server.threads is not None:
            bits.append(f"{server.threads} thread{'s' if server.threads != 1 else ''}")
        if bits:
            parts.append("server reports: " + " · ".join(bits))
        if server.output_tokens is not None and m.output_tokens not in (None, server.output_tokens):
            parts.append(f"token counts differ: headline uses {m.tokens_source} count {m.output_tokens}, "
                         f"server says {server.output_tokens}")
    cache = prompt_cache_text(column)
    if cache:
        parts.append(cache)
    for notice in column.notices:
        parts.append(f"⚠ {plain(notice)}")
    return "  \n".join(parts)


def prompt_cache_text(column: Column) -> str | None:
    """Where the server reused part of the prompt from its cache: that TTFT is not a whole prompt's."""
    usage = column.usage
    if usage is None or not usage.cached_prompt_tokens:
        return None
    of = f" of {usage.prompt_tokens}" if usage.prompt_tokens else ""
    return (f"prompt cache: {usage.cached_prompt_tokens}{of} prompt tokens reused by the server "
            "(its TTFT leaves their evaluation out)")


SPARK_BARS = 24
SPARK_LEVELS = "▁▂▃▄▅▆▇█"


def token_chart(column: Column, now: float | None = None) -> str | None:
    """The column's tokens over time, from the request to now (or the end): a bar per slice of time,
    its height the tokens (or chunks) that arrived in it, a dot where none did. A stall shows as dots,
    a burst as a tall bar, the wait for the first token as the leading dots."""
    timeline = column.timeline
    sent, deltas = timeline.sent, timeline.deltas
    if sent is None or not deltas:
        return None
    end = timeline.ended or max(now or 0.0, deltas[-1].at)  # a replay at 2× stamps ahead of the clock
    span = max(end - sent, 1e-3)
    counts = [0] * SPARK_BARS
    for delta in deltas:
        slot = min(SPARK_BARS - 1, max(0, int((delta.at - sent) / span * SPARK_BARS)))
        counts[slot] += delta.tokens if delta.tokens is not None else 1
    top = max(counts)
    bars = "".join("·" if c == 0 else SPARK_LEVELS[min(len(SPARK_LEVELS) - 1, (c * len(SPARK_LEVELS) - 1) // top)]
                   for c in counts)
    unit = "tokens" if all(d.tokens is not None for d in deltas) else "chunks"
    return f"`{bars}` {unit} over {fmt_s(span)}, {fmt_s(span / SPARK_BARS)} a bar"


def transcript(history: list[Turn], prompt: str | None = None, live: Column | None = None) -> list[dict[str, Any]]:
    """Chatbot messages: the column's past turns, then the turn in progress."""
    messages: list[dict[str, Any]] = []
    for turn in history:
        messages.append({"role": "user", "content": turn.user})
        answer = turn.assistant or ""
        if turn.note:
            answer = f"{answer}\n\n*{turn.note}*" if answer else f"*{turn.note}*"
        messages.append({"role": "assistant", "content": answer})
    if prompt is not None and live is not None:
        messages.append({"role": "user", "content": prompt})
        messages.append({"role": "assistant", "content": live_answer(live)})
    return messages


def live_answer(live: Column, as_text: bool = False) -> str:
    """The answer in progress: its text, its error, or its state (in Markdown italics unless ``as_text``)."""
    mark = "" if as_text else "*"
    shown = (lambda s: s) if as_text else plain
    answer = live.text
    if live.status == "error":
        error = shown(live.error or "")
        return f"{answer}\n\n{mark}✗ {error}{mark}" if answer else f"{mark}✗ {error}{mark}"
    return answer or f"{mark}{shown(live.detail or live.status)}…{mark}"


def finished_turn(prompt: str, column: Column) -> Turn:
    if column.status == "done":
        return Turn(prompt, column.text, ok=True)
    if column.status == "stopped":
        return Turn(prompt, column.text, ok=bool(column.text), note="■ stopped")
    return Turn(prompt, column.text, ok=False, note=f"✗ {plain(column.error or '')}")


def key_availability(target: Target, available: Availability, credentials: Any, public: bool) -> Availability:
    """For a keyed target, whose key a run would use: "your key", "the Space's key", or what to set."""
    from playground.errors import Availability

    options = target.options
    key = getattr(options, "api_key_env", None)
    if not key:
        return available
    needed = [n for n in (key, None if options.base_url else options.base_url_env) if n]  # type: ignore[attr-defined]
    if credentials is not None and credentials.get(key):
        if all(credentials.get(n) or (n != key and settings.env(n)) for n in needed):
            return Availability("ready", "your key")
        return Availability("unavailable", "also type " + ", ".join(n for n in needed if not credentials.get(n)))
    if available.state == "ready":
        return Availability("ready", "the Space's key (quota)" if public else "the server's key")
    return Availability(available.state, f"set a key under Your keys, or {available.reason}")


def choice_label(target: Target, available: Availability) -> str:
    if available.state == "ready":
        return f"{target.label} — {available.reason}" if available.reason not in ("", "ready") else target.label
    mark = "✗ " if available.state == "unavailable" else ""
    return f"{target.label} — {mark}{secrets.redact(available.reason)}"  # every page load receives it


def ordered_choices(items: list[tuple[Target, Availability]]) -> list[tuple[str, str]]:
    """Dropdown choices: ready targets first, then first-run ones, then unavailable (with why)."""
    rank = {"ready": 0, "first_run": 1, "unavailable": 2}
    ordered = sorted(enumerate(items), key=lambda p: (rank[p[1][1].state], p[0]))
    return [(choice_label(t, a), t.id) for _, (t, a) in ordered]
