"""The benchmarks still run: a tiny pass of each, checking the table they print (not the figures,
which belong to the README, measured with the full settings)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from playground.models import module_installed

ROOT = Path(__file__).resolve().parents[1]


def run_bench(*args: str, timeout: float = 600) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def table_rows(out: str) -> list[list[str]]:
    lines = [line for line in out.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_local_backends_bench_measures_every_backend(bundled_gguf: Path) -> None:
    out = run_bench("bench/local_backends.py", "--repeats", "1", "--tokens", "8")
    rows = {row[0]: row for row in table_rows(out)}
    expected = ["onnx", "transformers"] + [name for name, module in (("llamacpp", "llama_cpp"),
                                                                     ("openvino", "openvino_genai"))
                                            if module_installed(module)]
    for name in expected:
        assert name in rows and not rows[name][1].startswith("skipped"), out
        assert rows[name][1] == "8", f"{name} did not make its 8 tokens: {rows[name]}"
        assert float(rows[name][4]) > 0 and float(rows[name][5]) > 0, rows[name]
    assert rows["onnx"][-1] not in ("", "in process"), "the onnx model process's memory is missing"
    for name in expected:  # the roofline columns: both decode rates as shares of the same ceiling
        ours, bare = (re.fullmatch(r"(\d+) %", cell) for cell in rows[name][9:11])
        assert ours and bare, rows[name]
        scale = float(rows[name][5]) / float(rows[name][4])  # bare decode ÷ playground decode
        assert abs(int(ours[1]) * scale - int(bare[1])) <= 0.5 + 0.5 * scale, rows[name]  # rounding only
    if "llamacpp" in expected:  # the bare loop at 1 and 2 threads; the best of them is the bare figure
        sweep = re.fullmatch(r"(\d+) / ([12]) \(1: ([\d.]+), 2: ([\d.]+) tok/s\)", rows["llamacpp"][6])
        assert sweep, rows["llamacpp"]
        rates = {1: float(sweep[3]), 2: float(sweep[4])}
        assert float(rows["llamacpp"][5]) == max(rates.values()) == rates[int(sweep[2])], rows["llamacpp"]
    assert rows["onnx"][6] == "–", rows["onnx"]  # no sweep where the library sets its own threads


def test_fanout_bench_prints_ratios() -> None:
    """A tiny pass of every mode (the UI one only where Chromium and Playwright are): the modes table has
    a column per mode whose errors parse, and the cli table its ratios."""
    import importlib.util

    from tests.browser_flow import CHROMIUM

    browser = Path(CHROMIUM).exists() and importlib.util.find_spec("playwright") is not None
    modes = ["cli", "ui", "load"] if browser else ["cli", "load"]
    out = run_bench("bench/fanout.py", "--modes", ",".join(modes), "--repeats", "1", "--ns", "2",
                    "--ui-columns", "2", "--sessions", "2", "--load-targets", "2", "--load-runs", "1",
                    "--tokens", "10", "--load-tokens", "10", "--ttft-ms", "50", timeout=240)
    assert re.search(r"\|\s*2\s*\|\s*wall ÷ ideal\s*\|\s*\d+\.\d+", out), out
    first = out[out.index("| metric |"):].split("\n\n")[0].splitlines()
    head = [cell.strip() for cell in first[0].strip("|").split("|")]
    rows = {cells[0]: cells[1:-1] for cells in
            ([cell.strip() for cell in line.strip("|").split("|")] for line in first[2:])}
    wanted = ["cli: ours, N=2", "cli: warmed SDK, N=2"] + (["ui + Chromium, 2 cols"] if browser else []) + [
        "load: 2 sessions × 2"]
    assert head[1:-1] == wanted, out
    assert rows["streams measured"] == ["2", "2"] + (["2"] if browser else []) + ["4"], out
    assert rows["errors"] == ["0"] * len(wanted), out
    for metric in ("TTFT error p50 (ms)", "TTFT error p95 (ms)", "TTFT error max (ms)",
                   "decode error p50 (%)", "decode error p95 (%)", "decode error max (%)",
                   "server late p95 (ms)"):
        assert all(re.fullmatch(r"-?\d+\.\d+", cell) for cell in rows[metric]), (metric, out)
    assert all(re.fullmatch(r"\d+\.\d+|not reported", c) for c in rows["app's worst clock_lag_ms"]), out
    assert all(c.startswith("JSON download") for c in rows["app figures from"][2:]), out


def test_load_bench_runs_sessions_with_stops_and_a_broken_target() -> None:
    """A small pass of bench/load.py: every run completes, only the scripted faults show, and the
    app's resource table is printed for each round."""
    out = run_bench("bench/load.py", "--sessions", "3", "--runs", "2", "--rounds", "1", timeout=600)
    rows = {row[0]: row for row in table_rows(out)}
    assert rows["runs"][1:3] == ["2", "6"], out
    assert rows["errors not scripted"][1:3] == ["0", "0"], out
    cut, stopped = (int(n) for n in rows["columns cut as scripted / stopped"][2].split(" / "))
    assert cut + stopped >= 6, out  # every loaded run's broken column was cut, unless its run was stopped first
    assert rows["processes"][1] == rows["processes"][2], out  # no model or measurement process left over or lost
    assert "unexpected:" not in out
