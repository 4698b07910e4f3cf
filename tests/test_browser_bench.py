"""The browser streaming benchmark still runs: a tiny pass (``--quick``), checking the table it prints
(not the figures, which belong to the README, measured with the full settings)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import browser_flow as flow

pytest.importorskip("playwright.sync_api", reason="pip install -r requirements-dev.txt (playwright)")
if not os.access(flow.CHROMIUM, os.X_OK):
    pytest.skip(f"no Chromium at {flow.CHROMIUM} (apt-get install chromium)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"-?\d+(\.\d+)?"


def test_browser_stream_bench_quick_pass_prints_both_apps() -> None:
    done = subprocess.run([sys.executable, "bench/browser_stream.py", "--quick"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=flow.app_env())
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in done.stdout.splitlines() if line.startswith("|")][2:]
    metrics = {row[1] for row in rows}
    assert {"first token on screen (ms)", "last token on screen (ms)", "server CPU per run (s)",
            "frames shown per second"} <= metrics, done.stdout
    assert any("two sessions at once" in row[0] for row in rows), done.stdout
    for row in rows:
        if row[1].startswith("frames (count"):
            continue
        ours, bare = row[2], row[3]
        assert re.match(NUMBER, ours) and re.match(NUMBER, bare), f"a figure is missing: {row}"
