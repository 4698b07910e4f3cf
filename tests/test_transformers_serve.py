"""The openai backend against a real third-party OpenAI-compatible server: ``transformers serve``.

The server runs on 127.0.0.1 and a free port, serving the bundled SmolLM2. It cannot serve
the GGUF itself (``FOLDER:FILE.gguf`` fails: the config read from this GGUF has no
``architectures``), so the session dequantizes it once into an HF folder (~30-60 s).
What this server does that a scripted one would not: it never sends ``data: [DONE]``,
its last chunk carries finish_reason and usage together, and GET /v1/models answers 500
unless HF_HUB_CACHE exists.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx
import pytest

from playground.catalog import Target
from playground.request import ChatRequest, build_messages, make_params
from playground.runner import Job, run_to_end

pytestmark = pytest.mark.usefixtures("close_clients")  # the HTTP clients a test's loop made

START_BOUND_S = 180.0
STOP_BOUND_S = 10.0


@dataclass(frozen=True)
class Server:
    base_url: str
    model: str  # the server is pinned to this model and refuses any other name
    log: Path


@pytest.fixture(scope="session")
def dequantized_model(bundled_gguf: Path, tmp_path_factory: pytest.TempPathFactory,
                      clean_env: Callable[..., dict[str, str]]) -> Iterator[Path]:
    """The bundled GGUF as an fp32 HF folder (540 MB), removed at the end of the session."""
    folder = tmp_path_factory.mktemp("smollm2-hf")
    out = folder / "SmolLM2-135M-Instruct"
    try:
        done = subprocess.run([sys.executable, "-m", "playground.dequantize", str(bundled_gguf), str(out)],
                              capture_output=True, text=True, timeout=300, env=clean_env())
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert (out / "config.json").is_file()
        yield out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_BOUND_S)


@pytest.fixture(scope="module")
def transformers_server(dequantized_model: Path, tmp_path_factory: pytest.TempPathFactory,
                        clean_env: Callable[..., dict[str, str]]) -> Iterator[Server]:
    cli = Path(sys.executable).with_name("transformers")
    if not cli.is_file():
        pytest.skip("transformers[serving] is not installed (no `transformers` command)")
    home = tmp_path_factory.mktemp("hf-home")
    (home / "hub").mkdir()
    # OMP_NUM_THREADS=1: two requests generate at once in the server's threads; with torch's default
    # threads per request on a small, busy machine they thrash (3.7 s became 20 s in a probe)
    env = clean_env(HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub"), TRANSFORMERS_OFFLINE="1",
                    OMP_NUM_THREADS="1")
    port = _free_port()
    log = home / "server.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([str(cli), "serve", str(dequantized_model), "--host", "127.0.0.1",
                                 "--port", str(port), "--device", "cpu"],
                                stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_BOUND_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                tail = log.read_text()[-3000:]
                pytest.fail(f"transformers serve not healthy after {START_BOUND_S:g} s:\n{tail}")
            time.sleep(0.25)
        yield Server(base_url=f"{base}/v1", model=str(dequantized_model), log=log)
    finally:
        _stop(proc)


def served_target(server: Server, target_id: str) -> Target:
    return Target(id=target_id, label=f"SmolLM2 · transformers serve ({target_id})", backend="openai",
                  model=server.model, base_url=server.base_url, timeout_s=120, connect_timeout_s=5)


def request(prompt: str, max_tokens: int = 24) -> ChatRequest:
    return ChatRequest(build_messages(prompt), make_params(temperature=0, max_tokens=max_tokens))


async def test_streams_real_text_with_server_usage(transformers_server: Server) -> None:
    target = served_target(transformers_server, "serve")
    column = (await run_to_end([Job(target, request("What is the capital of France? Answer briefly."))]))[0]

    assert column.status == "done", f"{column.error}\n{transformers_server.log.read_text()[-2000:]}"
    assert column.error is None
    assert column.text.strip()
    assert column.finish_reason in ("stop", "length")
    assert column.usage is not None and column.usage.source == "server"
    assert column.usage.prompt_tokens and column.usage.prompt_tokens > 10
    metrics = column.metrics()
    assert metrics.tokens_source == "server"
    assert metrics.output_tokens == column.usage.completion_tokens
    assert 1 < metrics.output_tokens <= 24
    assert metrics.ttft_s is not None and metrics.ttft_s > 0
    assert metrics.decode_tokens_per_s is not None and metrics.decode_tokens_per_s > 0
    assert metrics.e2e_s is not None and metrics.e2e_s >= metrics.ttft_s
    # the server streams token by token: several chunks, not one blob at the end
    assert len(column.timeline.deltas) > 1


async def test_two_columns_against_one_server_both_complete(transformers_server: Server) -> None:
    targets = [served_target(transformers_server, "left"), served_target(transformers_server, "right")]
    prompts = ["Name three colors.", "Name three animals."]
    columns = await run_to_end([Job(t, request(p, max_tokens=16)) for t, p in zip(targets, prompts)])

    for column in columns:
        assert column.status == "done", column.error
        assert column.text.strip()
        assert column.usage is not None and column.usage.source == "server"
    assert columns[0].text != columns[1].text  # each column got its own answer
    # both ran at once: their streams overlapped in time, or at least both were sent before either ended
    sent = [c.timeline.sent for c in columns]
    ended = [c.timeline.ended for c in columns]
    assert max(sent) < min(ended)


async def test_a_model_the_server_does_not_serve_is_a_clear_error(transformers_server: Server) -> None:
    target = Target(id="wrong", label="wrong model", backend="openai", model="no-such-model",
                    base_url=transformers_server.base_url, timeout_s=60)
    column = (await run_to_end([Job(target, request("Hi", max_tokens=4))]))[0]
    assert column.status == "error"
    assert column.error and "no-such-model" in column.error
