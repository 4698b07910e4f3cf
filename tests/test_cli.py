"""The command line, as a user runs it: ``python -m playground targets | run`` in a subprocess.

Exit codes: 0 every target answered, 1 any target failed, 2 bad usage.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest

from playground.catalog import Catalog

FAKE_KEY = "ghp_" + "FAKESECRET0123456789abcdefDONOTPRINT"  # split so no scanner mistakes it for a real key
Env = Callable[..., dict[str, str]]


def cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "playground", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def write_catalog(folder: Path, text: str) -> Path:
    path = folder / "catalog.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def expected_reason(target) -> str:
    missing = [n for n in (getattr(target.options, "base_url_env", None), getattr(target.options, "api_key_env", None))
               if n and not (n == getattr(target.options, "base_url_env", None) and getattr(target.options, "base_url", None))]
    return "set " + " and ".join(missing)


# --- targets ----------------------------------------------------------------------------------------------


def test_targets_lists_every_builtin_target_with_its_availability(builtin_catalog: Catalog, clean_env: Env,
                                                                  tmp_path: Path, bundled_gguf: Path) -> None:
    done = cli("targets", env=clean_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert list(lines) == builtin_catalog.ids
    for target in builtin_catalog.targets:
        line = lines[target.id]
        assert target.backend in line
        if target.backend == "openai" and getattr(target.options, "api_key_env", None):
            assert " no " in line and line.rstrip().endswith(expected_reason(target)), line
    assert "set GITHUB_TOKEN" in lines["github/phi-4"]
    assert " ready " in lines["smollm2-transformers"] + " "
    assert " no " not in lines["smollm2-onnx"]


def test_targets_with_a_key_set_shows_ready_and_never_the_key(clean_env: Env, tmp_path: Path) -> None:
    done = cli("targets", env=clean_env(GITHUB_TOKEN=FAKE_KEY), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    github = [line for line in done.stdout.splitlines() if line.startswith("github/")]
    assert github and all(" ready " in line and "set GITHUB_TOKEN" not in line for line in github)
    assert FAKE_KEY not in done.stdout + done.stderr


# --- run --json on the real bundled model (the one expensive test here) ----------------------------------


def test_run_json_on_the_bundled_targets(clean_env: Env, tmp_path: Path, bundled_gguf: Path) -> None:
    ids = ["smollm2-transformers", "smollm2-onnx"]
    done = cli("run", "--targets", ",".join(ids), "--prompt", "What is 2 + 2? Answer briefly.",
               "--max-tokens", "16", "--temperature", "0", "--json",
               env=clean_env(), cwd=tmp_path, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    document = json.loads(done.stdout)  # one JSON object, nothing else on stdout
    assert document["prompt"] == "What is 2 + 2? Answer briefly."
    assert document["parameters"]["max_tokens"] == 16
    assert document["parameters"]["temperature"] == 0
    results = document["results"]
    assert [r["id"] for r in results] == ids
    assert [r["backend"] for r in results] == ["transformers", "onnx"]
    for result in results:
        assert result["model"] == "SmolLM2-135M-Instruct"
        assert result["status"] == "ok" and result["error"] is None, result
        assert result["text"].strip()
        assert result["finish_reason"] in ("stop", "length")
        assert result["tokens_source"] == "counted"
        assert 1 <= result["output_tokens"] <= 16
        assert result["ttft_s"] > 0
        assert result["e2e_s"] >= result["ttft_s"]
        assert result["decode_tokens_per_s"] is None or result["decode_tokens_per_s"] > 0
        if result["output_tokens"] >= 2:
            assert result["decode_tokens_per_s"] > 0


# --- failures: exit 1, and no key in any output -----------------------------------------------------------


class EchoAuthHandler(BaseHTTPRequestHandler):
    """A server that rejects every request, echoing the Authorization header it got (as some do)."""

    def _reject(self) -> None:
        echoed = self.headers.get("Authorization")
        body = json.dumps({"error": {"message": f"invalid key: {echoed}"}}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._reject()

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._reject()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo_auth_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoAuthHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def failing_catalog(folder: Path, closed_port: int, echo_url: str) -> Path:
    return write_catalog(folder, f"""
targets:
  - {{id: closed, label: nothing listens here, backend: openai, model: m,
     base_url: "http://127.0.0.1:{closed_port}/v1", api_key_env: GITHUB_TOKEN,
     connect_timeout_s: 2, timeout_s: 20}}
  - {{id: echo, label: echoes the key, backend: openai, model: m,
     base_url: "{echo_url}", api_key_env: GITHUB_TOKEN, connect_timeout_s: 2, timeout_s: 20}}
""")


def test_failing_targets_exit_1_and_never_print_the_key(clean_env: Env, tmp_path: Path, free_port: int,
                                                        echo_auth_server: str) -> None:
    catalog = failing_catalog(tmp_path, free_port, echo_auth_server)
    env = clean_env(GITHUB_TOKEN=FAKE_KEY)
    done = cli("run", "--catalog", str(catalog), "--targets", "closed,echo", "--prompt", "hi",
               "--max-tokens", "4", "--json", env=env, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert FAKE_KEY not in done.stdout + done.stderr
    closed, echo = json.loads(done.stdout)["results"]
    assert closed["status"] == "error" and "cannot connect" in closed["error"]
    assert echo["status"] == "error" and echo["error"].startswith("401 unauthorized: check GITHUB_TOKEN")
    assert "***" in echo["error"]  # the echoed key was there, and was redacted

    human = cli("run", "--catalog", str(catalog), "--targets", "echo", "--prompt", "hi", "--max-tokens", "4",
                env=env, cwd=tmp_path)
    assert human.returncode == 1
    assert "401 unauthorized" in human.stdout
    assert FAKE_KEY not in human.stdout + human.stderr


def test_one_failing_target_fails_the_run_while_the_others_answer(clean_env: Env, tmp_path: Path,
                                                                  free_port: int, echo_auth_server: str,
                                                                  bundled_gguf: Path) -> None:
    catalog = failing_catalog(tmp_path, free_port, echo_auth_server)
    done = cli("run", "--catalog", str(catalog), "--targets", "smollm2-onnx,closed", "--prompt", "hi",
               "--max-tokens", "4", "--json", env=clean_env(), cwd=tmp_path, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    answered, failed = json.loads(done.stdout)["results"]
    assert answered["id"] == "smollm2-onnx" and answered["status"] == "ok" and answered["text"].strip()
    assert failed["id"] == "closed" and failed["status"] == "error"
    assert failed["error"] == "set GITHUB_TOKEN"  # no key in the environment: refused before connecting


# --- bad usage: exit 2 with one clear line, before any model loads ----------------------------------------

BAD_USAGE = {
    "empty prompt": (["--targets", "smollm2-transformers", "--prompt", "   "], "prompt is empty"),
    "unknown target": (["--targets", "smollm2-onnx,no-such-target", "--prompt", "hi"],
                       "unknown target 'no-such-target'"),
    "no target": (["--targets", " , ", "--prompt", "hi"], "at least one target"),
    # on the slow-loading target: refused at once, before the model loads (the run's timeout is 30 s)
    "temperature": (["--targets", "smollm2-transformers", "--prompt", "hi", "--temperature", "5"],
                    "temperature"),
    "max tokens": (["--targets", "smollm2-transformers", "--prompt", "hi", "--max-tokens", "0"],
                   "max_tokens"),
    "top p": (["--targets", "smollm2-transformers", "--prompt", "hi", "--top-p", "0"], "top_p"),
}


@pytest.mark.parametrize("case", list(BAD_USAGE))
def test_bad_usage_exits_2_with_a_clear_message(case: str, clean_env: Env, tmp_path: Path) -> None:
    args, fragment = BAD_USAGE[case]
    done = cli("run", *args, "--json", env=clean_env(), cwd=tmp_path, timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith("error: ")
    assert fragment in done.stderr
    assert "Traceback" not in done.stderr


BAD_CATALOGS = {
    "not yaml": ("targets: [ {id: x, label: y\n", "not valid YAML"),
    "not a mapping": ("- just\n- a list\n", "expected a mapping with a 'targets:' list"),
    "unknown field": ("targets:\n  - {id: x, label: y, backend: openai, model: m,"
                      " base_url: 'http://127.0.0.1:1', colour: red}\n",
                      "target 'x': field 'colour': unknown field"),
    "key instead of its name": (f"targets:\n  - {{id: x, label: y, backend: openai, model: m,"
                                f" base_url: 'http://127.0.0.1:1', api_key_env: {FAKE_KEY}}}\n",
                                "must be the NAME of an environment variable"),
}


@pytest.mark.parametrize("case", list(BAD_CATALOGS))
@pytest.mark.parametrize("command", ["targets", "run"])
def test_a_malformed_catalog_exits_2(case: str, command: str, clean_env: Env, tmp_path: Path) -> None:
    text, fragment = BAD_CATALOGS[case]
    catalog = write_catalog(tmp_path, text)
    extra = ["--targets", "smollm2-onnx", "--prompt", "hi"] if command == "run" else []
    done = cli(command, "--catalog", str(catalog), *extra, env=clean_env(), cwd=tmp_path, timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(f"error: catalog {catalog}")
    assert fragment in done.stderr
    assert FAKE_KEY not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_catalog_file_exits_2(clean_env: Env, tmp_path: Path) -> None:
    done = cli("targets", "--catalog", str(tmp_path / "nope.yaml"), env=clean_env(), cwd=tmp_path, timeout=30)
    assert done.returncode == 2
    assert "cannot read it" in done.stderr


def test_a_run_is_recorded_and_replays_by_its_id_unless_told_not_to(clean_env: Env, tmp_path: Path, free_port: int,
                                                                    echo_auth_server: str) -> None:
    catalog = failing_catalog(tmp_path, free_port, echo_auth_server)
    env = clean_env(PLAYGROUND_DB=str(tmp_path / "runs.sqlite"))
    done = cli("run", "--catalog", str(catalog), "--targets", "closed", "--prompt", "hi there", "--max-tokens", "4",
               "--json", env=env, cwd=tmp_path)
    assert done.returncode == 1 and json.loads(done.stdout)["results"][0]["status"] == "error"  # stdout: the JSON alone
    recorded = re.search(r"recorded as (\S+) \(python -m playground replay \1\)", done.stderr)
    assert recorded, done.stderr[-1000:]  # a failed column is a finished run too
    again = cli("replay", recorded.group(1), "--speed", "instant", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-1000:]
    assert "== nothing listens here" in again.stdout and "-- error" in again.stdout and "'hi there'" in again.stderr
    skipped = cli("run", "--catalog", str(catalog), "--targets", "closed", "--prompt", "hi", "--max-tokens", "4",
                  "--no-record", env=env, cwd=tmp_path)
    assert skipped.returncode == 1 and "recorded as" not in skipped.stderr


@pytest.mark.parametrize(("goodput", "fragment"), [("ttft:nan", "goodput: ttft must be a finite number (got nan)"),
                                                   ("tps:inf", "goodput: tps must be a finite number (got inf)"),
                                                   ("ttft:500,ttft:100", "goodput: ttft given twice")])
def test_bench_refuses_a_goodput_objective_that_cannot_be_met_or_is_given_twice(
        goodput: str, fragment: str, clean_env: Env, tmp_path: Path) -> None:
    """NaN passes a ``<= 0`` check and then meets every objective: goodput 100 % and NaN in the JSON."""
    done = cli("bench", "--targets", "smollm2-onnx", "--prompt", "hi", "--goodput", goodput, "--json",
               env=clean_env(), cwd=tmp_path, timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith("error: ") and fragment in done.stderr
    assert "Traceback" not in done.stderr


def test_a_catalog_that_is_not_utf8_exits_2(clean_env: Env, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_bytes(b"\xff\xfe\x00garbage")
    done = cli("targets", "--catalog", str(catalog), env=clean_env(), cwd=tmp_path, timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(f"error: catalog {catalog}: not UTF-8 text")
    assert "Traceback" not in done.stderr


def test_replay_of_a_file_that_is_not_utf8_exits_2(clean_env: Env, tmp_path: Path) -> None:
    run_file = tmp_path / "run.json"
    run_file.write_bytes(b"\xff\xfe\x00garbage")
    done = cli("replay", str(run_file), env=clean_env(), cwd=tmp_path, timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(f"error: {run_file}: not a run file: not UTF-8 text")
    assert "Traceback" not in done.stderr


def test_ctrl_c_stops_a_run_and_keeps_what_came_so_far(tmp_path: Path, clean_env: Env) -> None:
    """The first Ctrl+C is the page's Stop: the answer so far is printed as stopped, exit 130, no traceback."""
    import signal
    import time

    from sse_server import Script, ScriptedServer

    with ScriptedServer({"slow": Script(tokens=400, ttft_s=0.05, interval_s=0.05)}) as server:
        catalog = write_catalog(tmp_path, json.dumps({"targets": [{"id": "slow", "label": "slow", "backend": "openai",
                                                                   "model": "slow", "base_url": server.base_url}]}))
        proc = subprocess.Popen([sys.executable, "-m", "playground", "run", "--catalog", str(catalog), "--targets",
                                 "slow", "--prompt", "hi", "--json", "--no-record"], env=clean_env(), cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not any(r.first_token_at for r in server.received if r.path.endswith("/chat/completions")):
                assert time.monotonic() < deadline and proc.poll() is None, "the stream never began"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "stopping" in err
    [result] = json.loads(out)["results"]
    assert result["status"] == "stopped" and result["text"] and result["error"] is None
