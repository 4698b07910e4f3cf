"""Benchmark charts as Vega-Lite specs, drawn from the benchmark document (``repeats.document``):
the numbers in a chart are the numbers in the table and the exports.

Gradio's ``gr.Plot`` draws a Vega-Lite spec with the Vega it already ships (its Altair path takes
the spec's JSON), so no plotting library runs on the server. One horizontal row per target, so that
the labels stay readable on a phone: each measured run as a tick, min to max as a thin line, the
95 % interval of the median as a thick bar, and the median as a dot.
"""

from __future__ import annotations

import json
from typing import Any

SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
CHARTS = {  # metric -> (title, axis title, factor from the document's unit)
    "ttft_s": ("Time to first token", "TTFT (ms)", 1000.0),
    "decode_tokens_per_s": ("Decode rate", "decode (tokens/s)", 1.0),
}
CAPTION = "dot: median · bar: 95 % interval of the median · ticks: each measured run · line: min to max"


def short_labels(labels: list[str]) -> dict[str, str]:
    """Each label without the words every label shares ("SmolLM2-135M · " before, " (offline)"
    after), so that a phone shows what tells the rows apart; a label left empty keeps its text."""
    if len(set(labels)) < 2:
        return {label: label for label in labels}
    head, tail = labels[0], labels[0]
    for label in labels[1:]:
        while not label.startswith(head):
            head = head[:-1]
        while not label.endswith(tail):
            tail = tail[1:]
    cut = head.rfind(" · ") + 3 if " · " in head else 0
    end = tail.find(" (") if " (" in tail else len(tail)
    trim = len(tail) - end if tail.endswith(")") or not tail else 0
    return {label: label[cut:len(label) - trim].strip() or label for label in labels}


def row_names(labels: list[str]) -> list[str]:
    """Labels made unique by their column ("Phi-4 (column 3)"): the same target twice is two rows."""
    return [f"{label} (column {i + 1})" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def chart_rows(document: dict[str, Any], metric: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one row per target's statistics, one row per measured run) in the chart's unit."""
    factor = CHARTS[metric][2]
    summaries, runs = [], []
    short = short_labels([entry["label"] for entry in document["targets"]])
    names = row_names([short[entry["label"]] for entry in document["targets"]])
    for entry, label in zip(document["targets"], names):
        s = entry["statistics"][metric]
        if s is None:
            continue
        summaries.append({"target": label, "name": entry["label"], "n": s["n"],
                          **{k: s[k] * factor for k in ("p50", "ci_low", "ci_high", "min", "max")}})
        runs += [{"target": label, "value": run[metric] * factor, "run": run["run"]} for run in entry["runs"]
                 if not run["warmup"] and run["status"] == "done" and run[metric] is not None]
    return summaries, runs


def spec(document: dict[str, Any], metric: str) -> dict[str, Any] | None:
    """A Vega-Lite spec for one metric, or None when no target has a measured value."""
    title, axis, _ = CHARTS[metric]
    summaries, runs = chart_rows(document, metric)
    if not summaries:
        return None
    y = {"field": "target", "type": "nominal", "title": None, "sort": [s["target"] for s in summaries],
         "axis": {"labelLimit": 150}}
    x = {"type": "quantitative", "title": axis, "scale": {"zero": True}}  # from zero: no exaggerated gaps
    tooltip = [{"field": "name", "title": "target"}, {"field": "p50", "title": "median", "format": ".1f"},
               {"field": "ci_low", "title": "95 % CI low", "format": ".1f"},
               {"field": "ci_high", "title": "95 % CI high", "format": ".1f"}, {"field": "n"}]
    return {
        "$schema": SCHEMA,
        "title": {"text": title, "anchor": "start", "fontSize": 13},
        "height": {"step": 36},
        "layer": [
            {"data": {"values": summaries}, "mark": {"type": "rule", "color": "#9ca3af"},
             "encoding": {"y": y, "x": {**x, "field": "min"}, "x2": {"field": "max"}}},
            {"data": {"values": runs}, "mark": {"type": "tick", "color": "#6b7280", "thickness": 1, "size": 14},
             "encoding": {"y": y, "x": {**x, "field": "value"},
                          "tooltip": [{"field": "run"}, {"field": "value", "title": axis, "format": ".1f"}]}},
            {"data": {"values": summaries}, "mark": {"type": "rule", "color": "#f97316", "size": 6, "opacity": 0.7},
             "encoding": {"y": y, "x": {**x, "field": "ci_low"}, "x2": {"field": "ci_high"}}},
            {"data": {"values": summaries}, "mark": {"type": "point", "filled": True, "size": 70, "color": "#111827"},
             "encoding": {"y": y, "x": {**x, "field": "p50"}, "tooltip": tooltip}},
        ],
    }


def plot_value(document: dict[str, Any], metric: str) -> dict[str, Any] | None:
    """The value ``gr.Plot`` sends to the page: the spec as JSON, in the shape of Gradio's own plots,
    whose ``chart`` kind makes the page fit the chart to the column's width (and refit it when that
    changes) and theme it like the rest of the page. A spec without a width gets the column's."""
    chart = spec(document, metric)
    return None if chart is None else {"type": "altair", "plot": json.dumps(chart), "chart": "line"}
