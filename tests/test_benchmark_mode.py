"""Benchmark mode: statistics checked by hand on fixed samples, a reproducible bootstrap, and
``python -m playground bench`` against a scripted server whose own timestamps are the truth."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from playground import stats
from tests.sse_server import Script, ServerProcess

ROOT = Path(__file__).resolve().parents[1]


def test_the_statistics_of_a_fixed_sample_by_hand() -> None:
    s = stats.summarize([4.0, 1.0, 100.0, 3.0, 2.0, None])  # None: a run without that metric
    assert s is not None and s.n == 5
    assert s.mean == 22.0 and s.p50 == 3.0 and s.min == 1.0 and s.max == 100.0
    assert math.isclose(s.p90, 4 + 0.6 * 96) and math.isclose(s.p95, 4 + 0.8 * 96)  # linear between ranks
    assert math.isclose(s.std, statistics.stdev([1, 2, 3, 4, 100]))
    assert s.ci_low <= s.p50 <= s.ci_high and 1.0 <= s.ci_low and s.ci_high <= 100.0
    again = stats.summarize([4.0, 1.0, 100.0, 3.0, 2.0])
    assert (again.ci_low, again.ci_high) == (s.ci_low, s.ci_high)  # the same seed, the same interval
    one = stats.summarize([0.5])
    assert one is not None and one.std is None and one.ci_low == one.ci_high == 0.5
    assert stats.summarize([None, None]) is None


def test_goodput_counts_runs_that_meet_every_objective() -> None:
    objectives = stats.Objectives.parse("ttft:500,tps:20")
    assert objectives == stats.Objectives(500.0, 20.0)
    runs = [(0.2, 30.0), (0.6, 30.0), (0.2, 10.0), (None, None)]  # the last one failed
    assert stats.goodput(runs, objectives) == 0.25
    assert stats.goodput(runs, stats.Objectives.parse("ttft:700")) == 0.75
    for bad, message in (("speed:3", "unknown objective 'speed'"), ("ttft:fast", "needs a number"),
                         ("tps:-1", "must be above 0")):
        with pytest.raises(ValueError, match=message):
            stats.Objectives.parse(bad)


def test_where_greedy_answers_first_differ() -> None:
    assert stats.first_difference(["abc", "abc"]) is None
    assert stats.first_difference(["abc", "abc", "abX"]) == (2, 2)
    assert stats.first_difference(["abc", "ab"]) == (1, 2)


def test_bench_reports_medians_within_10_ms_and_2_percent_of_the_servers_own_timings(
        tmp_path: Path, clean_env: Any) -> None:
    script = Script(tokens=30, ttft_s=0.15, interval_s=0.01, ttft_jitter_s=0.1)
    with ServerProcess({"jittery": script}) as server:
        catalog = tmp_path / "catalog.yaml"
        catalog.write_text(json.dumps({"targets": [{"id": "jittery", "label": "jittery", "backend": "openai",
                                                    "model": "jittery", "base_url": server.base_url}]}))
        done = subprocess.run([sys.executable, "-m", "playground", "bench", "--catalog", str(catalog),
                               "--targets", "jittery", "--prompt", "hi", "--repeat", "10", "--warmup", "1",
                               "--temperature", "0", "--goodput", "ttft:200", "--json"],
                              capture_output=True, text=True, cwd=ROOT, timeout=300, env=clean_env())
    assert done.returncode == 0, done.stderr[-2000:]
    [entry] = json.loads(done.stdout)["targets"]
    requests = [r for r in server.received if r.path.endswith("/chat/completions")][1:]  # after the warm-up
    assert len(requests) == 10 and entry["measured_runs"] == 10 and entry["failed_runs"] == 0
    true_ttft = statistics.median(r.first_token_at - r.at for r in requests)
    true_decode = statistics.median((len(r.events) - 1) / (r.events[-1] - r.events[0]) for r in requests)
    ttft, decode = entry["statistics"]["ttft_s"], entry["statistics"]["decode_tokens_per_s"]
    assert abs(ttft["p50"] - true_ttft) < 0.010, (ttft, true_ttft)
    assert abs(decode["p50"] - true_decode) / true_decode < 0.02, (decode, true_decode)
    assert ttft["ci_low"] - 0.002 <= true_ttft <= ttft["ci_high"] + 0.002  # a loopback hop of slack
    assert decode["ci_low"] * 0.99 <= true_decode <= decode["ci_high"] * 1.01  # the same slack, as a rate
    assert ttft["max"] - ttft["min"] > 0.02  # the jitter was there to measure
    assert entry["cold_samples"] == 0 and entry["identical_across_repeats"] is True
    truly_met = sum(r.first_token_at - r.at <= 0.2 for r in requests) / 10
    assert abs(entry["goodput"] - truly_met) <= 0.1  # a run within a ms of the line may fall either way
    assert "libraries" in json.loads(done.stdout)["environment"]


async def test_without_warm_up_the_first_sample_is_cold_and_counted() -> None:
    from playground import repeats
    from playground.catalog import Target
    from tests.sse_server import ScriptedServer

    with ScriptedServer({"steady": Script(tokens=5, ttft_s=0.01, interval_s=0.005)}) as server:
        target = Target(id="never-asked-cold", label="cold", backend="openai", model="steady",
                        base_url=server.base_url)
        [samples] = await repeats.bench([target], _chat(5), repeat=3, warmup=0)
    assert [s.cold for s in samples] == [True, False, False] and not any(s.warmup for s in samples)
    assert repeats.summary(target, samples, None, greedy=True)["cold_samples"] == 1


async def test_runs_served_from_the_servers_prompt_cache_are_counted_and_said() -> None:
    from playground import repeats
    from playground.catalog import Target
    from tests.sse_server import ScriptedServer

    scripts = {"cached": Script(tokens=5, prompt_tokens=45, cached_tokens=41), "fresh": Script(tokens=5)}
    with ScriptedServer(scripts) as server:
        targets = [Target(id=f"prompt-cache-{m}", label=m, backend="openai", model=m, base_url=server.base_url)
                   for m in scripts]
        results = await repeats.bench(targets, _chat(5), repeat=2, warmup=1)
    document = repeats.document(targets, results, _chat(5), "hi", 2, 1, None)
    cached, fresh = document["targets"]
    assert [r["cached_prompt_tokens"] for r in cached["runs"]] == [41, 41, 41]
    assert (cached["prompt_cache_samples"], fresh["prompt_cache_samples"]) == (2, 0)
    summary = repeats.summary_markdown(document).splitlines()
    assert "2 with part of the prompt from the server's cache" in summary[1]
    assert "prompt cache" not in summary[2] and "server's cache" not in summary[2]
    assert "2 from the server's prompt cache" in repeats.text_report(document)
    rows = repeats.csv_text(document).splitlines()
    assert "cached_prompt_tokens" in rows[0].split(",") and len(rows) == 1 + 6


async def test_an_ordinary_run_before_a_benchmark_makes_its_first_sample_warm() -> None:
    from playground import repeats, runner
    from playground.catalog import Target
    from playground.report import result_entry
    from playground.runner import Job
    from tests.sse_server import ScriptedServer

    with ScriptedServer({"steady": Script(tokens=5, ttft_s=0.01, interval_s=0.005)}) as server:
        target = Target(id="asked-by-a-run", label="warm", backend="openai", model="steady",
                        base_url=server.base_url)
        [column] = await runner.run_to_end([Job(target, _chat(5))])
        [again] = await runner.run_to_end([Job(target, _chat(5))])
        [samples] = await repeats.bench([target], _chat(5), repeat=2, warmup=0)
    assert column.status == "done" and column.cold and not again.cold
    assert (result_entry(column)["cold"], result_entry(again)["cold"]) == (True, False)  # the run's exports say so
    assert [s.cold for s in samples] == [False, False]
    assert repeats.summary(target, samples, None, greedy=True)["cold_samples"] == 0


def test_bench_csv_prints_one_row_per_run_with_the_environment(tmp_path: Path, clean_env: Any) -> None:
    import csv
    import io

    with ServerProcess({"steady": Script(tokens=6, ttft_s=0.02, interval_s=0.005)}) as server:
        catalog = tmp_path / "catalog.yaml"
        catalog.write_text(json.dumps({"targets": [{"id": "steady", "label": "steady", "backend": "openai",
                                                    "model": "steady", "base_url": server.base_url}]}))
        done = subprocess.run([sys.executable, "-m", "playground", "bench", "--catalog", str(catalog),
                               "--targets", "steady", "--prompt", "hi", "--repeat", "2", "--warmup", "1",
                               "--temperature", "0", "--csv"],
                              capture_output=True, text=True, cwd=ROOT, timeout=300, env=clean_env())
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [(r["target"], r["run"], r["warmup"], r["cold"], r["status"]) for r in rows] == [
        ("steady", "1", "True", "True", "done"), ("steady", "2", "False", "False", "done"),
        ("steady", "3", "False", "False", "done")]
    for row in rows:
        assert float(row["ttft_s"]) > 0.015 and float(row["decode_tokens_per_s"]) > 0 and row["output_tokens"] == "6"
        assert row["env_python"] == sys.version.split()[0] and row["env_cores"] and row["env_os"]
        assert row["lib_openai"] and row["model_endpoint"].startswith("http://127.0.0.1")
        assert (row["repeat"], row["warmup_runs"], row["fair_mode"], row["temperature"]) == ("2", "1", "False", "0.0")


def test_bench_refuses_bad_options_by_name(tmp_path: Path, clean_env: Any) -> None:
    for args, message in ((["--repeat", "0"], "--repeat: must be from 1 to 100"),
                          (["--warmup", "11"], "--warmup: must be from 0 to 10"),
                          (["--goodput", "fast"], "goodput: unknown objective 'fast'")):
        done = subprocess.run([sys.executable, "-m", "playground", "bench", "--targets", "smollm2-onnx",
                               "--prompt", "hi", *args], capture_output=True, text=True, cwd=ROOT, timeout=60,
                              env=clean_env())
        assert done.returncode == 2 and message in done.stderr, done.stderr


def test_a_local_targets_decode_is_shown_against_this_machines_ceiling(builtin_catalog: Any,
                                                                        bundled_gguf: Path) -> None:
    from playground import repeats, roofline

    target = builtin_catalog.get("smollm2-llamacpp")
    assert roofline.model_bytes(target) == bundled_gguf.stat().st_size  # the file it loads
    samples = [repeats.Sample(target.id, i, False, False, "done", None, "x", 0.1, rate, 0.02, 0.03, 1.0, 20, "counted")
               for i, rate in enumerate((40.0, 50.0, 60.0), start=1)]
    entry = repeats.summary(target, samples, None, greedy=False)
    roof = entry["roofline"]
    assert math.isclose(roof["ceiling_tokens_per_s"], roof["bandwidth_gb_s"] * 1e9 / bundled_gguf.stat().st_size)
    assert math.isclose(roof["share_of_ceiling"], 50.0 / roof["ceiling_tokens_per_s"])
    assert roof["text"].startswith(f"{50.0 / roof['ceiling_tokens_per_s'] * 100:.0f} % of this machine's ceiling")
    fp32 = roofline.ceiling("transformers", bundled_gguf.stat().st_size)  # dequantized: 8 times the Q4 file
    assert math.isclose(fp32.bytes_per_token, 8 * bundled_gguf.stat().st_size)


def _chat(max_tokens: int) -> Any:
    from playground.request import ChatRequest, build_messages, make_params

    return ChatRequest(build_messages("Name a colour."), make_params(temperature=0.0, max_tokens=max_tokens))


async def _watch(run: Any) -> tuple[list[Any], set[str]]:
    """Every column object the run showed (each run of each column), and the phases it showed."""
    seen: dict[int, Any] = {}
    phases: set[str] = set()
    async for columns in run.frames():
        for i, column in enumerate(columns):
            seen[id(column)] = column
            phases.add(f"{i}:{run.phase[i]}:{column.detail}")
    return list(seen.values()), phases


@pytest.fixture
def llamacpp(bundled_gguf: Path, builtin_catalog: Any) -> Any:
    pytest.importorskip("llama_cpp")
    return builtin_catalog.get("smollm2-llamacpp")


@pytest.fixture
def openvino(bundled_gguf: Path, builtin_catalog: Any) -> Any:
    """Another runtime: two columns of one llama.cpp model take turns anyway (one context at a time)."""
    pytest.importorskip("openvino_genai")
    return builtin_catalog.get("smollm2-openvino")


@pytest.fixture
def scripted() -> Any:
    from tests.sse_server import ScriptedServer

    with ScriptedServer({"steady": Script(tokens=40, ttft_s=0.05, interval_s=0.02)}) as server:
        yield server


async def test_fair_mode_runs_local_columns_one_at_a_time_and_remote_ones_beside_them(
        llamacpp: Any, openvino: Any, scripted: Any) -> None:
    from playground import repeats
    from playground.catalog import Target
    from playground.runner import Job

    remote = Target(id="remote", label="remote", backend="openai", model="steady", base_url=scripted.base_url)
    jobs = [Job(llamacpp, _chat(12)), Job(openvino, _chat(12)), Job(remote, _chat(40))]
    assert repeats.fair_by_default([j.target for j in jobs], repeat=2, warmup=1)
    assert not repeats.fair_by_default([j.target for j in jobs], repeat=1, warmup=0)  # one run: not a benchmark
    run = repeats.RepeatedRun(jobs, repeat=2, warmup=1, fair=True)
    columns, phases = await _watch(run)
    assert [[(s.run, s.warmup) for s in samples] for samples in run.samples] == [[(1, True), (2, False), (3, False)]] * 3
    assert all(s.status == "done" for samples in run.samples for s in samples)
    local = sorted((c.timeline.sent, c.timeline.ended) for c in columns
                   if c.target in (llamacpp, openvino) and c.timeline.sent is not None)
    assert len(local) == 6
    for (_, ended), (sent, _) in zip(local, local[1:]):
        assert ended <= sent  # never two local generations at once
    remote_spans = [(c.timeline.sent, c.timeline.ended) for c in columns if c.target is remote and c.timeline.sent]
    assert any(sent < r_end and r_sent < ended for r_sent, r_end in remote_spans for sent, ended in local)
    assert any(repeats.FAIR_WAIT in p for p in phases)  # a column said why it waited
    assert {"0:warm-up 1 of 1:", "0:run 2 of 2:"} <= phases


async def test_without_fair_mode_the_local_columns_run_at_once(llamacpp: Any, openvino: Any) -> None:
    from playground import repeats
    from playground.runner import Job

    run = repeats.RepeatedRun([Job(llamacpp, _chat(24)), Job(openvino, _chat(24))], repeat=1, warmup=0, fair=False)
    columns, _ = await _watch(run)
    (a_sent, a_end), (b_sent, b_end) = [(c.timeline.sent, c.timeline.ended) for c in columns if c.final]
    assert a_sent < b_end and b_sent < a_end


async def test_stop_ends_every_column_and_every_repeat_at_once(llamacpp: Any, scripted: Any) -> None:
    import asyncio
    import time

    from playground import repeats
    from playground.catalog import Target
    from playground.runner import Job

    remote = Target(id="remote", label="remote", backend="openai", model="steady", base_url=scripted.base_url)
    run = repeats.RepeatedRun([Job(llamacpp, _chat(200)), Job(llamacpp, _chat(200)), Job(remote, _chat(40))],
                              repeat=10, warmup=0, fair=True)
    stopped_at = None
    async for columns in run.frames():
        if stopped_at is None and any(c.text for c in columns):
            stopped_at = time.perf_counter()
            await asyncio.to_thread(run.stop)  # from another thread, as the page's Stop button does
    assert stopped_at is not None and time.perf_counter() - stopped_at < 4.0
    assert all(len(samples) <= 1 for samples in run.samples)
    assert {c.status for c in run.columns} <= {"stopped", "done"}
    assert "stopped" in {c.status for c in run.columns}


async def test_a_stopped_run_is_not_a_failure_and_a_column_stopped_before_its_turn_ends_stopped(
        llamacpp: Any, openvino: Any) -> None:
    from playground import repeats
    from playground.runner import Job

    run = repeats.RepeatedRun([Job(llamacpp, _chat(200)), Job(openvino, _chat(200))], repeat=3, warmup=0, fair=True)
    run.stop_column(1)  # before anything ran: that column never takes a turn
    async for columns in run.frames():
        if columns[0].text:
            run.stop()
    assert [c.status for c in run.columns] == ["stopped", "stopped"] and run.samples[1] == []
    request = _chat(200)
    document = repeats.document([llamacpp, openvino], run.samples, request, "p", 3, 0, None)
    entry = document["targets"][0]
    assert entry["stopped_runs"] == 1 and entry["failed_runs"] == 0 and entry["measured_runs"] == 0


def test_greedy_answers_are_not_called_identical_when_fewer_than_two_runs_answered() -> None:
    from playground import repeats
    from playground.catalog import Target

    target = Target(id="broken", label="broken", backend="openai", model="m", base_url="http://127.0.0.1:9/v1")

    def sample(run: int, status: str, text: str = "") -> repeats.Sample:
        return repeats.Sample("broken", run, False, False, status, None if status == "done" else "500 server error",
                              text, None, None, None, None, None, None, None)

    for samples in ([sample(1, "error"), sample(2, "error")], [sample(1, "done", "red"), sample(2, "error")]):
        entry = repeats.summary(target, samples, None, greedy=True)
        assert "identical_across_repeats" not in entry, entry
    both = repeats.summary(target, [sample(1, "done", "red"), sample(2, "done", "red")], None, greedy=True)
    assert both["identical_across_repeats"] is True
