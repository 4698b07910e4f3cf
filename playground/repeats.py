"""Benchmark mode: each target runs its warm-up runs and then its measured runs one after another,
while the targets run at the same time; the measured runs are summarised with ``stats``.

A run is "cold" when it was its target's first request in this process (a model load, a new
connection, a server-side cache): the statistics say how many cold samples they include. Warm-up
runs are run and reported, never counted.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any, Callable

from playground import environment, roofline, stats
from playground.backends import local_backends
from playground.catalog import Target
from playground.request import ChatRequest
from playground.runner import Column, Job, Run

METRICS = {  # name in the report -> what it measures
    "ttft_s": "time to first token (s)",
    "decode_tokens_per_s": "decode rate (tokens/s)",
    "itl_p50_s": "inter-token latency, median (s)",
    "itl_p95_s": "inter-token latency, p95 (s)",
    "e2e_s": "end-to-end latency (s)",
    "output_tokens": "output tokens",
}
_asked: set[str] = set()  # targets that have had a request in this process


@dataclass(frozen=True)
class Sample:
    target: str
    run: int  # 1.. over warm-up and measured runs
    warmup: bool
    cold: bool
    status: str
    error: str | None
    text: str
    ttft_s: float | None
    decode_tokens_per_s: float | None
    itl_p50_s: float | None
    itl_p95_s: float | None
    e2e_s: float | None
    output_tokens: int | None
    tokens_source: str | None


def _sample(column: Column, run: int, warmup: bool, cold: bool) -> Sample:
    m = column.metrics()
    return Sample(column.target.id, run, warmup, cold, column.status, column.error, column.text, m.ttft_s,
                  m.decode_tokens_per_s, m.itl_p50_s, m.itl_p95_s, m.e2e_s, m.output_tokens, m.tokens_source)


async def repeat_target(target: Target, request: ChatRequest, repeat: int, warmup: int,
                        on_sample: Callable[[Sample], None] | None = None) -> list[Sample]:
    """``warmup`` runs, then ``repeat`` measured ones, one after another."""
    samples = []
    for run in range(1, warmup + repeat + 1):
        cold = target.id not in _asked
        _asked.add(target.id)
        columns: list[Column] = []
        async for columns in Run([Job(target, request)]).frames():
            pass
        sample = _sample(columns[0], run, run <= warmup, cold)
        samples.append(sample)
        if on_sample is not None:
            on_sample(sample)
    return samples


async def bench(targets: list[Target], request: ChatRequest, repeat: int, warmup: int,
                on_sample: Callable[[Sample], None] | None = None) -> list[list[Sample]]:
    """Every target at once, each its runs in turn."""
    return list(await asyncio.gather(*(repeat_target(t, request, repeat, warmup, on_sample) for t in targets)))


def summary(target: Target, samples: list[Sample], objectives: stats.Objectives | None, greedy: bool
            ) -> dict[str, Any]:
    measured = [s for s in samples if not s.warmup]
    ok = [s for s in measured if s.status == "done"]
    entry: dict[str, Any] = {
        "id": target.id, "label": target.label, "backend": target.backend, "model": environment.target_facts(target),
        "measured_runs": len(measured), "failed_runs": len(measured) - len(ok),
        "cold_samples": sum(s.cold for s in ok),
        "statistics": {name: (s.as_dict() if (s := stats.summarize([getattr(x, name) for x in ok])) else None)
                       for name in METRICS},
        "runs": [asdict(s) for s in samples],
    }
    decode = entry["statistics"]["decode_tokens_per_s"]
    size = roofline.model_bytes(target) if target.backend in local_backends() else None
    if size and decode:
        ceiling = roofline.ceiling(target.backend, size)
        entry["roofline"] = {"bandwidth_gb_s": ceiling.bandwidth_gb_s, "bytes_per_token": ceiling.bytes_per_token,
                             "ceiling_tokens_per_s": ceiling.tokens_per_s,
                             "share_of_ceiling": ceiling.share(decode["p50"]),
                             "text": ceiling.describe(decode["p50"])}
    if objectives is not None:
        entry["goodput"] = stats.goodput([(s.ttft_s, s.decode_tokens_per_s) for s in measured], objectives)
    if greedy:
        difference = stats.first_difference([s.text for s in ok])
        entry["identical_across_repeats"] = difference is None
        if difference is not None:
            entry["first_difference"] = {"run": ok[difference[0]].run, "character": difference[1]}
    return entry


def document(targets: list[Target], results: list[list[Sample]], request: ChatRequest, prompt: str,
             repeat: int, warmup: int, objectives: stats.Objectives | None) -> dict[str, Any]:
    greedy = request.params.greedy
    return {
        "kind": "benchmark",
        "prompt": prompt,
        "parameters": request.params.model_dump(),
        "repeat": repeat,
        "warmup": warmup,
        "objectives": asdict(objectives) if objectives else None,
        "environment": environment.machine(),
        "definitions": {**METRICS, **STATISTICS},
        "targets": [summary(t, s, objectives, greedy) for t, s in zip(targets, results)],
    }


STATISTICS = {
    "p50/p90/p95": "percentiles, linear interpolation between the nearest ranks",
    "std": "sample standard deviation (n - 1)",
    "ci_low/ci_high": "95 % percentile-bootstrap interval of the median (2000 resamples, seed 0)",
    "goodput": "share of measured runs meeting every objective (a failed run meets none)",
    "cold_samples": "measured runs that were their target's first request in this process",
    "roofline": "decode p50 as a share of bandwidth ÷ bytes of weights read a token (local targets; see roofline.py)",
}


def _figure(value: float | None, name: str) -> str:
    if value is None:
        return "–"
    if name == "decode_tokens_per_s":
        return f"{value:.1f}"
    if name.endswith("_s"):
        return f"{value * 1000:.1f} ms" if value < 10 else f"{value:.2f} s"
    return f"{value:g}"


def text_report(document: dict[str, Any]) -> str:
    """Per target: each metric's statistics over the measured runs, goodput, and whether greedy
    answers were the same."""
    lines = [f"{document['repeat']} measured runs per target after {document['warmup']} warm-up"
             f" run{'s' if document['warmup'] != 1 else ''}; prompt: {document['prompt'][:60]!r}"]
    for entry in document["targets"]:
        lines += ["", f"== {entry['label']} ({entry['id']}): {entry['measured_runs'] - entry['failed_runs']} ok, "
                      f"{entry['failed_runs']} failed, {entry['cold_samples']} cold"]
        lines.append(f"{'metric':<22}{'n':>4}{'mean':>11}{'p50':>11}{'p90':>11}{'p95':>11}{'min':>11}{'max':>11}"
                     f"{'std':>11}  95 % CI of p50")
        for name in METRICS:
            s = entry["statistics"][name]
            if s is None:
                lines.append(f"{name:<22}{0:>4}")
                continue
            cells = "".join(f"{_figure(s[k], name):>11}" for k in ("mean", "p50", "p90", "p95", "min", "max", "std"))
            lines.append(f"{name:<22}{s['n']:>4}{cells}  {_figure(s['ci_low'], name)} – {_figure(s['ci_high'], name)}")
        if "roofline" in entry:
            lines.append(f"decode p50 is {entry['roofline']['text']}")
        if "goodput" in entry and entry["goodput"] is not None:
            objectives = stats.Objectives(**document["objectives"]).describe()
            lines.append(f"goodput: {entry['goodput'] * 100:.0f} % of runs met {objectives}")
        if "identical_across_repeats" in entry:
            same = entry["identical_across_repeats"]
            lines.append("greedy answers: identical across repeats" if same else
                         f"greedy answers: run {entry['first_difference']['run']} differs from the first at "
                         f"character {entry['first_difference']['character']}")
        for run in entry["runs"]:
            if run["error"]:
                lines.append(f"run {run['run']}: {run['status']}: {run['error']}")
    env = document["environment"]
    lines += ["", f"playground {env['playground']} ({env['git_revision'] or 'no git'}), Python {env['python']}, "
                  f"{env['cpu']}, {env['cores']} cores, {env['memory_gb']} GB, {env['os']}"]
    return "\n".join(lines)


def csv_text(document: dict[str, Any]) -> str:
    """One row per run (warm-up runs included, marked), with the environment in every row."""
    import csv
    import io

    from playground.report import csv_safe

    env = document["environment"]
    machine = {"playground": env["playground"], "git_revision": env["git_revision"], "python": env["python"],
               "cpu": env["cpu"], "cores": env["cores"], "memory_gb": env["memory_gb"], "os": env["os"]}
    out = io.StringIO()
    fields = ["target", "run", "warmup", "cold", "status", "error", *METRICS, "tokens_source", "text", *machine]
    writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for entry in document["targets"]:
        for run in entry["runs"]:
            writer.writerow({k: csv_safe(v) for k, v in {**run, **machine}.items()})
    return out.getvalue()
