"""The benchmark charts draw the benchmark document's own numbers: the table's and the exports'."""

from __future__ import annotations

import json

from playground import charts, repeats, stats
from playground.difference import difference_notes
from playground.catalog import Target
from playground.repeats import Sample
from playground.request import ChatRequest, build_messages, make_params


def sample(target: str, run: int, ttft: float, rate: float, warmup: bool = False, status: str = "done") -> Sample:
    return Sample(target, run, warmup, run == 1, status, None if status == "done" else "boom", "text", ttft, rate,
                  0.01, 0.02, 1.0, 20, "server")


def document() -> dict:
    targets = [Target(id="a", label="Alpha", backend="openai", model="m", base_url="http://127.0.0.1:9/v1"),
               Target(id="b", label="Beta", backend="openai", model="m", base_url="http://127.0.0.1:9/v1")]
    results = [[sample("a", 1, 9.9, 1.0, warmup=True), sample("a", 2, 0.10, 50), sample("a", 3, 0.30, 40),
                sample("a", 4, 0.20, 45)],
               [sample("b", 1, 0.50, 20), sample("b", 2, 0.70, 22), sample("b", 3, 2.0, 1.0, status="error")]]
    request = ChatRequest(build_messages("hi"), make_params(temperature=0.0))
    return repeats.document(targets, results, request, "hi", 3, 1, stats.Objectives(500, None))


def test_each_chart_shows_the_documents_statistics_and_measured_runs_only() -> None:
    doc = document()
    for metric, (_, _, factor) in charts.CHARTS.items():
        spec = charts.spec(doc, metric)
        assert spec is not None
        rule, ticks, interval, median = spec["layer"]
        for entry, row in zip(doc["targets"], median["data"]["values"]):
            s = entry["statistics"][metric]
            assert row["name"] == entry["label"]
            assert (row["p50"], row["ci_low"], row["ci_high"], row["min"], row["max"]) == tuple(
                s[k] * factor for k in ("p50", "ci_low", "ci_high", "min", "max"))
        shown = sorted((r["target"], r["run"], r["value"]) for r in ticks["data"]["values"])
        short = charts.short_labels([e["label"] for e in doc["targets"]])
        measured = sorted((short[e["label"]], r["run"], r[metric] * factor) for e in doc["targets"] for r in e["runs"]
                          if not r["warmup"] and r["status"] == "done")
        assert shown == measured  # no warm-up run, no failed run
        assert interval["encoding"]["x"]["field"] == "ci_low" and interval["encoding"]["x2"]["field"] == "ci_high"
    assert charts.spec(doc, "ttft_s")["layer"][3]["data"]["values"][0]["p50"] == 200.0  # ms: the median of 0.1-0.3 s


def test_the_table_rows_are_the_same_figures_as_the_chart() -> None:
    doc = document()
    frame = repeats.statistics_frame(doc)
    ttft = frame[frame["metric"] == "TTFT (ms)"]
    chart = charts.spec(doc, "ttft_s")["layer"][3]["data"]["values"]
    assert list(ttft["p50"]) == [round(row["p50"], 1) for row in chart]
    assert list(ttft["n"]) == [3, 2]


def test_the_plot_value_is_gradios_altair_shape_and_a_chart_needs_a_value() -> None:
    value = charts.plot_value(document(), "decode_tokens_per_s")
    assert value is not None and value["type"] == "altair" and value["chart"] == "line"
    assert "width" not in json.loads(value["plot"])  # the page gives it the column's width (390 px on a phone)
    empty = {"targets": [{"label": "x", "statistics": {"ttft_s": None}, "runs": []}]}
    assert charts.spec(empty, "ttft_s") is None


def test_chart_rows_drop_the_part_every_label_shares() -> None:
    assert charts.short_labels(["SmolLM2-135M · ONNX", "SmolLM2-135M · llama.cpp"]) == {
        "SmolLM2-135M · ONNX": "ONNX", "SmolLM2-135M · llama.cpp": "llama.cpp"}
    assert charts.short_labels(["Phi-4 · GitHub", "Phi-4-mini · GitHub"]) == {
        "Phi-4 · GitHub": "Phi-4 · GitHub", "Phi-4-mini · GitHub": "Phi-4-mini · GitHub"}
    assert charts.short_labels(["same", "same"]) == {"same": "same"}
    assert charts.short_labels(["S · ONNX (offline)", "S · llama.cpp (offline)"]) == {
        "S · ONNX (offline)": "ONNX", "S · llama.cpp (offline)": "llama.cpp"}


def test_greedy_answers_of_one_model_are_compared_and_the_difference_noted_in_its_column() -> None:
    targets = [Target(id=i, label=i, backend="openai", model="m", base_url="http://127.0.0.1:9/v1") for i in "abc"]
    targets.append(Target(id="d", label="d", backend="openai", model="m", base_url="http://127.0.0.1:9/v1"))
    texts = {"a": "The sky is *blue*", "b": "The sky is *blue*", "c": "The sky appears blue", "d": "A sky"}
    results = [[Sample(t.id, 1, False, False, "done", None, texts[t.id], 0.1, 10, None, None, 1.0, 5, "server")]
               for t in targets]
    request = ChatRequest(build_messages("hi"), make_params(temperature=0.0))
    doc = repeats.document(targets, results, request, "hi", 1, 0, None)
    [entry] = doc["across_targets"]
    assert entry["identical"] is False and entry["targets"] == ["a", "b", "c", "d"]
    assert entry["differences"][0] == {  # model "m": no tokenizer here, so by words, and it says so
        "target": "c", "against": "a", "token": 3, "unit": "words split at whitespace", "character": 7,
        "common": "The sky", "theirs": " is", "ours": " appears", "theirs_after": " *blue*", "ours_after": " blue"}
    # each is compared with the first: d leaves it at the first word, before c does
    assert [d["target"] for d in entry["differences"]] == ["c", "d"] and entry["first_difference"]["target"] == "d"
    notes = difference_notes(doc, ["a", "b", "c", "d"])
    assert list(notes) == [2, 3]  # only the columns that left the first one's answer
    assert "word 3 (words split at whitespace)" in notes[2] and "word 1" in notes[3]
    assert "**[appears]** blue" in notes[2] and r"**[is]** \*blue\*" in notes[2]
    sampled = repeats.document(targets, results, ChatRequest(build_messages("hi"), make_params(temperature=0.7)),
                               "hi", 1, 0, None)
    assert sampled["across_targets"] == []  # sampled answers differ by design: nothing to compare
