"""Benchmark mode: each target runs its warm-up runs and then its measured runs one after another,
while the targets run at the same time; the measured runs are summarised with ``stats``.

A run is "cold" when it was its target's first request in this process (a model load, a new
connection, a server-side cache): the statistics say how many cold samples they include. Warm-up
runs are run and reported, never counted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any, AsyncIterator, Callable

from playground import environment, measure_process, metrics, roofline, stats
from playground.difference import across_targets, across_text, first_difference, repeats_text
from playground.backends import local_backends
from playground.catalog import Target
from playground.errors import ErrorKind
from playground.report import roofline_entry
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
    cached_prompt_tokens: int | None = None  # prompt tokens the server took from its cache: not in its TTFT


def _sample(column: Column, run: int, warmup: bool) -> Sample:
    m = column.metrics()
    return Sample(column.target.id, run, warmup, column.cold, column.status, column.error, column.text, m.ttft_s,
                  m.decode_tokens_per_s, m.itl_p50_s, m.itl_p95_s, m.e2e_s, m.output_tokens, m.tokens_source,
                  column.usage.cached_prompt_tokens if column.usage else None)


FAIR_WAIT = "waiting for the CPU (fair mode)"
# a run that failed with one of these will fail the same way again: the column's repeats end there
FINAL_ERRORS = frozenset({ErrorKind.AUTH, ErrorKind.RATE_LIMITED, ErrorKind.NOT_FOUND, ErrorKind.BAD_REQUEST,
                          ErrorKind.UNAVAILABLE})


def fair_by_default(targets: list[Target], repeat: int, warmup: int) -> bool:
    """Fair mode's default: in benchmark mode, when two or more local targets share the machine."""
    benchmark = repeat > 1 or warmup > 0
    return benchmark and sum(t.backend in local_backends() for t in targets) >= 2


class RepeatedRun:
    """Benchmark mode: each column runs ``warmup`` runs, then ``repeat`` measured ones, one after
    another, while the columns run at the same time. In fair mode the local columns take turns, one
    local generation at a time (remote ones still run at once): two local models on one machine
    would otherwise measure their contention for its cores.

    The same interface as ``runner.Run`` (``columns``, ``frames()``, ``stop()``, ``stop_column()``):
    ``columns`` holds each column's current run; ``samples`` each column's finished runs."""

    def __init__(self, jobs: list[Job], repeat: int, warmup: int, fair: bool):
        now = time.perf_counter()
        self.jobs, self.repeat, self.warmup, self.fair = jobs, repeat, warmup, fair
        self.columns = [Column(job.target, metrics.Timeline(started=now)) for job in jobs]
        self.samples: list[list[Sample]] = [[] for _ in jobs]
        self.phase = [""] * len(jobs)  # "warm-up 1 of 2", "run 3 of 10"
        self._runs: list[Run | None] = [None] * len(jobs)
        self._halted: set[int] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._halt: list[asyncio.Event] = []
        self._cpu: asyncio.Lock | None = None
        # where each column's HTTP stream is stamped, once for all its runs: samples of one place
        self._remote = measure_process.choose(self, [job.target for job in jobs])

    def stop(self) -> None:
        for i in range(len(self.jobs)):
            self.stop_column(i)

    def stop_column(self, index: int) -> None:
        """From any thread: this column's current run stops, and no further run starts."""
        self._halted.add(index)
        run = self._runs[index]
        if run is not None:
            run.stop()
        loop = self._loop
        if loop is not None and not loop.is_closed() and self._halt:
            loop.call_soon_threadsafe(self._halt[index].set)

    def _show(self, index: int, column: Column) -> None:
        self.columns[index] = column
        assert self._changed is not None
        self._changed.set()

    async def frames(self) -> AsyncIterator[list[Column]]:
        self._loop = asyncio.get_running_loop()
        self._changed, self._cpu = asyncio.Event(), asyncio.Lock()
        self._halt = [asyncio.Event() for _ in self.jobs]
        for index in list(self._halted):  # stop_column may add to it from another thread
            self._halt[index].set()
        tasks = [asyncio.create_task(self._column(i)) for i in range(len(self.jobs))]
        try:
            while True:
                await self._changed.wait()
                self._changed.clear()
                ended = all(task.done() for task in tasks)
                yield self.columns
                if ended:
                    break
            for task in tasks:
                task.result()  # a bug in a column's loop is not swallowed
            now = time.perf_counter()
            for column in self.columns:  # stopped before its first run began
                if not column.final:
                    column.status, column.detail, column.timeline.ended = "stopped", "", now
        finally:
            measure_process.release(self)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _column(self, index: int) -> None:
        try:
            await self._runs_of(index)
        finally:
            assert self._changed is not None
            self._changed.set()

    async def _runs_of(self, index: int) -> None:
        job = self.jobs[index]
        takes_turns = self.fair and job.target.backend in local_backends()
        for number in range(1, self.warmup + self.repeat + 1):
            if index in self._halted:
                return
            warm = number <= self.warmup
            self.phase[index] = (f"warm-up {number} of {self.warmup}" if warm
                                 else f"run {number - self.warmup} of {self.repeat}")
            if takes_turns and not await self._take_turn(index):
                return
            try:
                column = await self._one_run(index, job, number, warm)
            finally:
                if takes_turns:
                    assert self._cpu is not None
                    self._cpu.release()
            if column.status == "stopped" or (column.status == "error" and column.error_kind in FINAL_ERRORS):
                return

    async def _take_turn(self, index: int) -> bool:
        """Wait for the CPU, first come first served; False when the column was stopped meanwhile.
        Every turn goes through the lock's queue (a column that has just had its turn queues behind
        the one waiting), and a column says so when it has to wait."""
        assert self._cpu is not None
        turn = asyncio.ensure_future(self._cpu.acquire())
        halted = asyncio.ensure_future(self._halt[index].wait())
        granted = False
        try:
            await asyncio.sleep(0)  # a free lock is granted at once
            if not turn.done():
                self._show(index, Column(self.jobs[index].target, metrics.Timeline(started=time.perf_counter()),
                                         detail=FAIR_WAIT))
                await asyncio.wait({turn, halted}, return_when=asyncio.FIRST_COMPLETED)
            granted = turn.done() and not turn.cancelled() and index not in self._halted
        finally:
            halted.cancel()
            if not turn.done():
                turn.cancel()  # a cancelled acquire never holds the lock
            elif not granted and not turn.cancelled():
                self._cpu.release()  # granted to a column that was stopped (or cancelled) meanwhile
        if not granted:
            waiting = self.columns[index]
            if not waiting.final:
                waiting.status, waiting.detail = "stopped", ""
                self._show(index, waiting)
        return granted

    async def _one_run(self, index: int, job: Job, number: int, warm: bool) -> Column:
        run = self._runs[index] = Run([job], remote=self._remote[index:index + 1])
        if index in self._halted:
            run.stop()
        column = run.columns[0]
        async for columns in run.frames():
            column = columns[0]
            self._show(index, column)
        self._runs[index] = None
        self.samples[index].append(_sample(column, number, warm))
        return column


async def bench(targets: list[Target], request: ChatRequest, repeat: int, warmup: int, fair: bool = False,
                on_sample: Callable[[Sample], None] | None = None) -> list[list[Sample]]:
    """Every target at once, each its runs in turn (the command line's benchmark)."""
    run = RepeatedRun([Job(t, request) for t in targets], repeat, warmup, fair)
    reported = [0] * len(targets)
    async for _ in run.frames():
        for i, samples in enumerate(run.samples):
            for sample in samples[reported[i]:]:
                if on_sample is not None:
                    on_sample(sample)
            reported[i] = len(samples)
    return run.samples


def summary(target: Target, samples: list[Sample], objectives: stats.Objectives | None, greedy: bool
            ) -> dict[str, Any]:
    measured = [s for s in samples if not s.warmup and s.status != "stopped"]  # a Stop is not a failure
    ok = [s for s in measured if s.status == "done"]
    entry: dict[str, Any] = {
        "id": target.id, "label": target.label, "backend": target.backend, "model": environment.target_facts(target),
        "measured_runs": len(measured), "failed_runs": len(measured) - len(ok),
        "stopped_runs": sum(not s.warmup and s.status == "stopped" for s in samples),
        "cold_samples": sum(s.cold for s in ok),
        "prompt_cache_samples": sum(bool(s.cached_prompt_tokens) for s in ok),
        "statistics": {name: (s.as_dict() if (s := stats.summarize([getattr(x, name) for x in ok])) else None)
                       for name in METRICS},
        "runs": [asdict(s) for s in samples],
    }
    decode = entry["statistics"]["decode_tokens_per_s"]
    ceiling = roofline.for_target(target) if decode else None
    if ceiling is not None and decode:
        entry["roofline"] = roofline_entry(ceiling, decode["p50"])
    if objectives is not None:
        entry["goodput"] = stats.goodput([(s.ttft_s, s.decode_tokens_per_s) for s in measured], objectives)
    if greedy and len(ok) >= 2:  # with fewer answers there is nothing to compare
        difference = first_difference([s.text for s in ok], [target] * len(ok))
        entry["identical_across_repeats"] = difference is None
        if difference is not None:
            entry["first_difference"] = {"run": ok[difference.index].run, "against_run": ok[0].run,
                                         **difference.as_dict()}
    return entry


def document(targets: list[Target], results: list[list[Sample]], request: ChatRequest, prompt: str,
             repeat: int, warmup: int, objectives: stats.Objectives | None, fair: bool = False) -> dict[str, Any]:
    greedy = request.params.greedy
    return {
        "kind": "benchmark",
        "prompt": prompt,
        "parameters": request.params.model_dump(),
        "repeat": repeat,
        "warmup": warmup,
        # which mode produced the numbers: local columns one at a time (fair) or all at once
        "fair_mode": fair,
        "objectives": asdict(objectives) if objectives else None,
        "environment": environment.machine(),
        "definitions": {**METRICS, **STATISTICS},
        "targets": [summary(t, s, objectives, greedy) for t, s in zip(targets, results)],
        "across_targets": across_targets(targets, results) if greedy else [],
    }


STATISTICS = {
    "p50/p90/p95": "percentiles, linear interpolation between the nearest ranks",
    "std": "sample standard deviation (n - 1)",
    "ci_low/ci_high": "95 % percentile-bootstrap interval of the median (2000 resamples, seed 0)",
    "goodput": "share of measured runs meeting every objective (a failed run meets none)",
    "cold_samples": "measured runs that were their target's first request in this process",
    "prompt_cache_samples": "measured runs whose server took part of the prompt from its cache: their TTFT "
                            "leaves that part's evaluation out",
    "stopped_runs": "measured runs stopped by the user: not in the statistics, the goodput or the failures",
    "fair_mode": "local targets took turns, one local generation at a time (remote ones ran at once)",
    "first_difference": "where a greedy answer first leaves the first one's: token (from 1) by the model's "
                        "tokenizer where the playground has it, else by words split at whitespace (unit says which)",
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
             f" run{'s' if document['warmup'] != 1 else ''}; prompt: {document['prompt'][:60]!r}"
             + ("; fair mode: local targets took turns" if document.get("fair_mode") else "")]
    for entry in document["targets"]:
        lines += ["", f"== {entry['label']} ({entry['id']}): {entry['measured_runs'] - entry['failed_runs']} ok, "
                      f"{entry['failed_runs']} failed, {entry['cold_samples']} cold"
                      + (f", {entry['prompt_cache_samples']} from the server's prompt cache"
                         if entry.get("prompt_cache_samples") else "")]
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
            lines.append("greedy answers " + repeats_text(entry))
        for run in entry["runs"]:
            if run["error"]:
                lines.append(f"run {run['run']}: {run['status']}: {run['error']}")
    for entry in document.get("across_targets", []):
        lines += ["", across_text(entry)]
    env = document["environment"]
    lines += ["", f"playground {env['playground']} ({env['git_revision'] or 'no git'}), Python {env['python']}, "
                  f"{env['cpu']}, {env['cores']} cores, {env['memory_gb']} GB, {env['os']}"]
    return "\n".join(lines)


TABLE_METRICS = {  # metric -> (row label, factor from the document's unit, digits)
    "ttft_s": ("TTFT (ms)", 1000.0, 1),
    "decode_tokens_per_s": ("decode (tok/s)", 1.0, 1),
    "itl_p50_s": ("ITL p50 (ms)", 1000.0, 2),
    "itl_p95_s": ("ITL p95 (ms)", 1000.0, 2),
    "e2e_s": ("E2E (s)", 1.0, 3),
    "output_tokens": ("output tokens", 1.0, 1),
}
STAT_COLUMNS = ["target", "metric", "n", "mean", "p50", "p90", "p95", "min", "max", "std", "CI low", "CI high"]


def statistics_frame(document: dict[str, Any]) -> Any:
    """The page's statistics table: a row per target and metric, over the measured runs."""
    import pandas as pd

    from playground.charts import row_names

    rows = []
    for entry, target in zip(document["targets"], row_names([e["label"] for e in document["targets"]])):
        for name, (label, factor, digits) in TABLE_METRICS.items():
            s = entry["statistics"][name]
            if s is None:
                continue

            def fig(value: float | None) -> float | None:
                return None if value is None else round(value * factor, digits)

            rows.append({"target": target, "metric": label, "n": s["n"], "mean": fig(s["mean"]),
                         "p50": fig(s["p50"]), "p90": fig(s["p90"]), "p95": fig(s["p95"]), "min": fig(s["min"]),
                         "max": fig(s["max"]), "std": fig(s["std"]), "CI low": fig(s["ci_low"]),
                         "CI high": fig(s["ci_high"])})
    return pd.DataFrame(rows, columns=STAT_COLUMNS)


def summary_markdown(document: dict[str, Any]) -> str:
    """Above the statistics: what was measured, and per target what the table cannot show."""
    mode = ("fair mode: local targets took turns for the CPU" if document.get("fair_mode")
            else "all targets at once")
    lines = [f"**Benchmark:** {document['repeat']} measured run{'s' if document['repeat'] != 1 else ''} per target "
             f"after {document['warmup']} warm-up; {mode}. Statistics over the measured runs (CI: 95 % "
             "bootstrap interval of the median)."]
    objectives = document.get("objectives")
    for entry in document["targets"]:
        bits = [f"{entry['measured_runs'] - entry['failed_runs']} ok", f"{entry['failed_runs']} failed",
                f"{entry['cold_samples']} cold"]
        if entry.get("prompt_cache_samples"):
            bits.append(f"{entry['prompt_cache_samples']} with part of the prompt from the server's cache "
                        "(TTFT without its evaluation)")
        if entry.get("goodput") is not None and objectives:
            bits.append(f"goodput {entry['goodput'] * 100:.0f} % ({stats.Objectives(**objectives).describe()})")
        if "roofline" in entry:
            bits.append(f"decode p50 is {entry['roofline']['text']}")
        if "identical_across_repeats" in entry:
            bits.append("greedy answers " + repeats_text(entry))
        lines.append(f"- **{entry['label']}**: " + " · ".join(bits))
    for entry in document.get("across_targets", []):
        lines.append(f"- {across_text(entry)}")
    return "\n".join(lines)


def csv_text(document: dict[str, Any]) -> str:
    """One row per run (warm-up runs included, marked). Every row carries what produced it: the
    benchmark's settings (prompt, parameters, repeat, warm-up, fair mode), the machine, the library
    versions and the target's model files or endpoint, so rows of two exports compare on their own."""
    import csv
    import io

    from playground.report import csv_safe

    settings = {"prompt": document["prompt"], **document["parameters"], "repeat": document["repeat"],
                "warmup_runs": document["warmup"], "fair_mode": document.get("fair_mode", False)}
    columns = [*settings, *environment.export_columns({}, None)]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["target", "run", "warmup", "cold", "status", "error", *METRICS,
                                             "tokens_source", "cached_prompt_tokens", "text", *columns],
                            extrasaction="ignore")
    writer.writeheader()
    for entry in document["targets"]:
        context = {**settings, **environment.export_columns(document["environment"], entry["model"])}
        for run in entry["runs"]:
            writer.writerow({k: csv_safe(v) for k, v in {**run, **context}.items()})
    return out.getvalue()
