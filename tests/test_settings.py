"""Every environment variable is read in ``playground/settings.py`` (keys in ``secrets.py``); a bad
value is refused naming the variable, all of them at once at start-up, and no library call exits."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from playground import settings
from playground.settings import SettingsError

ROOT = Path(__file__).resolve().parents[1]
# the environment is copied whole to a child process here, not read
PASSES_ENVIRONMENT_ON = {"onnx_build.py", "worker_process.py"}


def environment_reads(path: Path) -> list[int]:
    """Lines where the code (not a string it writes) touches ``os.environ`` or ``os.getenv``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == "os" and node.attr in ("environ", "getenv")]


def test_no_module_but_settings_and_secrets_reads_the_environment() -> None:
    readers = []
    for path in [*(ROOT / "playground").rglob("*.py"), ROOT / "app.py"]:
        if path.name in {"settings.py", "secrets.py"} | PASSES_ENVIRONMENT_ON:
            continue
        readers += [f"{path.relative_to(ROOT)}:{line}" for line in environment_reads(path)]
    assert readers == []
    assert environment_reads(ROOT / "playground" / "settings.py")  # the check does see a read
    for name in PASSES_ENVIRONMENT_ON:
        text = next((ROOT / "playground").rglob(name)).read_text(encoding="utf-8")
        assert not re.search(r"os\.environ\.get|os\.environ\[|os\.getenv", text.replace(
            'os.environ.get("PYTHONPATH", "")', "")), name


@pytest.mark.parametrize(("name", "value", "message"), [
    ("PLAYGROUND_LOCAL_SLOTS", "two", "PLAYGROUND_LOCAL_SLOTS must be a whole number (got 'two')"),
    ("PLAYGROUND_LOCAL_SLOTS", "0", "PLAYGROUND_LOCAL_SLOTS must be between 1 and 64 (got 0)"),
    ("PLAYGROUND_QUEUE_TIMEOUT_S", "soon", "PLAYGROUND_QUEUE_TIMEOUT_S must be a number (got 'soon')"),
    ("PLAYGROUND_PORT", "70000", "PLAYGROUND_PORT must be between 1 and 65535 (got 70000)"),
    ("PLAYGROUND_MEASURE_PRIORITY", "high", "PLAYGROUND_MEASURE_PRIORITY must be one of realtime, nice, normal"),
    ("PLAYGROUND_ALLOW_PRIVATE_URLS", "yes", "PLAYGROUND_ALLOW_PRIVATE_URLS must be 0 or 1 (got 'yes')"),
    ("PLAYGROUND_QUEUE_TIMEOUT_S", "nan", "PLAYGROUND_QUEUE_TIMEOUT_S must be at least 1 (got nan)"),
    ("PLAYGROUND_MODEL_HANG_S", "inf", "PLAYGROUND_MODEL_HANG_S must be at least 2 (got inf)"),
    ("PLAYGROUND_STALL_TRACE", "0x", "PLAYGROUND_STALL_TRACE must be 0 or 1"),
    ("PLAYGROUND_MEASURE_PROCESS", "yes", "PLAYGROUND_MEASURE_PROCESS must be 0, 1 or auto (got 'yes')"),
    ("PLAYGROUND_RATE", "fast", "PLAYGROUND_RATE must look like 6/min"),
    ("PLAYGROUND_SESSIONS", "5", "PLAYGROUND_SESSIONS must be at least 10 (got 5)"),
])
def test_a_bad_value_is_refused_by_name_and_never_exits(monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                                                        message: str) -> None:
    monkeypatch.setenv(name, value)
    assert any(message in line for line in settings.problems())
    with pytest.raises(SettingsError, match=re.escape(message)):
        for read in settings.CHECKED:
            read()


def test_blank_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAYGROUND_LOCAL_SLOTS", "  ")
    monkeypatch.setenv("PLAYGROUND_QUEUE_TIMEOUT_S", "")
    assert settings.local_slots() == 2 and settings.queue_timeout_s() == 300.0


def test_the_command_line_names_every_bad_setting_at_once(clean_env: object, tmp_path: Path) -> None:
    env = clean_env(PLAYGROUND_LOCAL_SLOTS="many", PLAYGROUND_MODEL_HANG_S="1")  # type: ignore[operator]
    done = subprocess.run([sys.executable, "-m", "playground", "targets"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "error: PLAYGROUND_LOCAL_SLOTS must be a whole number (got 'many')" in done.stderr
    assert "error: PLAYGROUND_MODEL_HANG_S must be at least 2 (got 1)" in done.stderr
    assert "Traceback" not in done.stderr
