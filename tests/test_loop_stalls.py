"""Nothing slow runs on an event loop: the app's first run after start-up, in a fresh process,
through its real API, with OpenAI-compatible and Ollama targets on loopback servers.

The app's lag monitors log any stall of Gradio's loop or of the measurement loop over 100 ms
("... event loop was blocked for N ms"); before imports and the tokenizer moved off the loops,
a first run blocked them for 0.2-0.9 s.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from gradio_client import Client
from ollama_server import OllamaStub
from sse_server import Script, ScriptedServer
from test_ui import run_args

from playground.settings import MAX_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ScriptedServer, OllamaStub]]:
    scripts = {m: Script(tokens=40, ttft_s=0.1, interval_s=0.01) for m in MODELS}
    with ScriptedServer(scripts) as openai_server, OllamaStub(models=("phi3.5:latest",)) as ollama:
        yield openai_server, ollama


def start_app(tmp_path: Path, clean_env, port: int, openai_url: str, ollama_url: str) -> subprocess.Popen:
    catalog = {"targets": [{"id": f"scripted/{m}", "label": f"scripted {m}", "backend": "openai", "model": m,
                            "base_url": openai_url} for m in MODELS]
               + [{"id": "stub/ollama", "label": "stub ollama", "backend": "ollama", "model": "phi3.5"}]}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    env = clean_env(PLAYGROUND_CATALOG=str(path), OLLAMA_HOST=ollama_url, PLAYGROUND_STALL_TRACE='1')
    return subprocess.Popen([sys.executable, "-m", "playground", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_until_up(url: str, app: subprocess.Popen, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if app.poll() is not None:
            pytest.fail(f"the app exited: {app.stdout.read() if app.stdout else ''}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail("the app did not start in time")


def test_first_run_blocks_no_event_loop(tmp_path: Path, clean_env, free_port: int, servers) -> None:
    openai_server, ollama = servers
    app = start_app(tmp_path, clean_env, free_port, openai_server.base_url, ollama.base_url)
    try:
        url = f"http://127.0.0.1:{free_port}/"
        wait_until_up(url, app)
        client = Client(url, verbose=False)
        targets = [f"scripted/{m}" for m in MODELS] + ["stub/ollama"]
        job = client.submit(*run_args("hello", targets, max_tokens=40, columns=len(targets)), api_name="/run")
        job.result(timeout=120)
        final = job.outputs()[-1]
        rows = final[2 * MAX_COLUMNS]["data"]
        headers = final[2 * MAX_COLUMNS]["headers"]
        lag = [row[headers.index("clock ±ms")] for row in rows]
        assert [row[-1] for row in rows] == ["done"] * len(targets), rows
        assert all(value < 100 for value in lag), lag
    finally:
        app.terminate()
        try:
            output, _ = app.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            app.kill()
            output, _ = app.communicate()
    assert "event loop was blocked" not in output, output[-20000:]
