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
    expected = ["onnx", "transformers"] + (["llamacpp"] if module_installed("llama_cpp") else [])
    for name in expected:
        assert name in rows and not rows[name][1].startswith("skipped"), out
        assert rows[name][1] == "8", f"{name} did not make its 8 tokens: {rows[name]}"
        assert float(rows[name][4]) > 0 and float(rows[name][5]) > 0, rows[name]
    assert rows["onnx"][-1] not in ("", "in process"), "the onnx model process's memory is missing"


def test_fanout_bench_prints_ratios() -> None:
    out = run_bench("bench/fanout.py", "--repeats", "1", "--ns", "2", "--tokens", "10", "--ttft-ms", "50")
    assert re.search(r"\|\s*2\s*\|\s*wall ÷ ideal\s*\|\s*\d+\.\d+", out), out
