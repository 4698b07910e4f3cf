"""Pure formatting from runner state to UI values."""

from __future__ import annotations

from playground.errors import Availability
from playground.catalog import Target
from playground.events import ServerTimings, Usage
from playground.metrics import Delta, Timeline
from playground.runner import Column
from playground.ui_format import Turn, finished_turn, ordered_choices, status_markdown, transcript


def target(tid: str = "t1") -> Target:
    return Target(id=tid, label=f"Label {tid}", backend="openai", model="m", base_url="http://127.0.0.1:1/v1")


def done_column() -> Column:
    timeline = Timeline(started=0.0, sent=1.0, deltas=[Delta(1.5, 3, None), Delta(2.5, 3, None)], ended=2.6)
    return Column(target(), timeline, status="done", text="abcdef", usage=Usage(5, 11, "server"))


def test_status_line_shows_every_metric() -> None:
    line = status_markdown(done_column())
    assert "done" in line
    assert "TTFT 500 ms" in line
    assert "decode 10.0 tok/s" in line  # (11 - 1) / (2.5 - 1.5)
    assert "tokens 11 (server)" in line
    assert "E2E 1.60 s" in line


def test_estimated_tokens_are_marked() -> None:
    column = done_column()
    column.usage = None
    column.exact_counts = False
    assert "tokens ~" in status_markdown(column)


def test_server_timings_and_disagreement_are_shown() -> None:
    column = done_column()
    column.server = ServerTimings(decode_tokens_per_s=42.0, load_s=3.2, output_tokens=12)
    line = status_markdown(column)
    assert "server reports: decode 42.0 tok/s" in line and "model load 3.20 s" in line
    assert "headline uses server count 11, server says 12" in line


def test_error_line_names_the_error() -> None:
    column = done_column()
    column.status, column.error = "error", "401 unauthorized: check GITHUB_TOKEN"
    assert "error: 401 unauthorized" in status_markdown(column)
    turn = finished_turn("hi", column)
    assert not turn.ok and "401" in turn.note


def test_transcript_keeps_history_and_live_turn() -> None:
    history = [Turn("q1", "a1", ok=True), Turn("q2", "", ok=False, note="✗ boom")]
    live = done_column()
    messages = transcript(history, "q3", live)
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    assert messages[3]["content"] == "*✗ boom*"
    assert messages[5]["content"] == "abcdef"


def test_choices_put_ready_targets_first_with_reasons() -> None:
    items = [
        (target("a"), Availability("unavailable", "set GITHUB_TOKEN")),
        (target("b"), Availability("ready", "ready")),
        (target("c"), Availability("first_run", "not downloaded yet: first run downloads 2.2 GB")),
    ]
    choices = ordered_choices(items)
    assert [value for _, value in choices] == ["b", "c", "a"]
    assert choices[2][0] == "Label a — ✗ set GITHUB_TOKEN"
    assert "first run downloads 2.2 GB" in choices[1][0]


def test_the_token_chart_shows_a_stall_as_dots_and_a_burst_as_a_tall_bar() -> None:
    from playground.catalog import Target
    from playground.metrics import Delta, Timeline
    from playground.runner import Column
    from playground.ui_format import SPARK_BARS, token_chart

    timeline = Timeline(started=0.0, sent=0.0, ended=2.4)
    timeline.deltas = [Delta(0.05 * i, 2, 1) for i in range(1, 20)]  # steady to 0.95 s
    timeline.deltas += [Delta(1.8, 2, 1) for _ in range(6)]  # a stall, then a burst of six at once
    timeline.deltas += [Delta(2.3, 2, 1)]
    column = Column(Target(id="t", label="t", backend="openai", model="m", base_url="http://127.0.0.1:1/v1"),
                    timeline, status="done")
    chart = token_chart(column)
    assert chart is not None
    bars = chart.split("`")[1]
    assert len(bars) == SPARK_BARS and "tokens over 2.40 s, 100 ms a bar" in chart
    assert bars[10:17] == "·" * 7  # 1.0 to 1.7 s: nothing arrived
    assert bars[18] == "█" and bars[5] < "█"  # the burst is the tallest bar
    column.timeline.deltas = []
    assert token_chart(column) is None  # nothing yet: no chart


def test_a_servers_error_page_shows_as_text_not_as_markdown_or_html() -> None:
    from markdown_it import MarkdownIt

    from playground.ui_format import live_answer

    column = done_column()
    column.status, column.error = "error", "502 server error from https://my-host.example.com/v1 " \
                                           "(<html><h1>502 Bad Gateway</h1>\n<hr>nginx</html>) " \
                                           "sent 'Bearer ***', ***)) [here](http://x) api-key=)*"
    column.notices.append("# not a heading <b>nor bold</b>")
    render = MarkdownIt("commonmark").render
    lines = [status_markdown(column), transcript([finished_turn("q", column)])[1]["content"], live_answer(column)]
    for line in lines:
        html = render(line)
        assert "<h1>" not in html and "<b>" not in html
        assert "&lt;h1&gt;502 Bad Gateway&lt;/h1&gt;" in html  # every character of the message is still there
        assert "'Bearer ***', ***)) [here](" in html and ") api-key=)*" in html
        # a URL stays whole and links where it says, as an autolink (the page's Markdown links bare URLs,
        # and would keep the backslashes that escape the rest)
        assert '<a href="https://my-host.example.com/v1">https://my-host.example.com/v1</a>' in html
        assert '<a href="http://x">http://x</a>' in html and html.count("<a ") == 2
    assert "# not a heading &lt;b&gt;nor bold&lt;/b&gt;" in render(status_markdown(column))


def test_a_stopped_column_is_stopped_in_the_downloads_not_an_error() -> None:
    from playground.report import result_entry

    column = done_column()
    column.status = "stopped"
    assert (result_entry(column)["status"], result_entry(column)["error"]) == ("stopped", None)
    column.status, column.error = "error", "500 server error"
    assert (result_entry(column)["status"], result_entry(column)["error"]) == ("error", "500 server error")
