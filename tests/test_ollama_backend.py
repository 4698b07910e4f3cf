"""The ollama backend, with the real ``ollama`` client, against a loopback Ollama stand-in."""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import AsyncIterator

import pytest

from playground.backends import ollama_native
from playground.errors import READY, BackendError
from playground.backends.ollama_native import OllamaBackend
from playground.catalog import Target
from playground.events import ErrorKind, Event, Finished, RequestSent, TextDelta, Usage
from playground.report import result_entry, results_frame, run_document, table_row, write_exports
from playground.request import ChatRequest, build_messages, make_params
from playground.runner import Job, Run, run_to_end
from ollama_server import OllamaStub

pytestmark = pytest.mark.usefixtures("close_clients")  # the HTTP clients a test's loop made

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh_tags_cache():
    ollama_native.forget_tags()
    yield
    ollama_native.forget_tags()


@pytest.fixture
def stub():
    with OllamaStub() as server:
        yield server


def target(base_url: str, model: str = "phi3.5", **extra: object) -> Target:
    return Target(id="ollama/test", label=f"{model} · Ollama stub", backend="ollama", model=model,
                  base_url=base_url, **extra)


def chat(prompt: str = "Say hello", system: str | None = None, **params: object) -> ChatRequest:
    return ChatRequest(build_messages(prompt, system), make_params(**params))


async def run_one(t: Target, request: ChatRequest | None = None):
    [column] = await run_to_end([Job(t, request or chat())], frame_s=0.01)
    return column


async def test_final_chunk_timings_reach_the_column_and_usage(stub):
    column = await run_one(target(stub.base_url))
    assert column.status == "done", column.error
    assert column.text == "Hello from Ollama!"
    assert column.finish_reason == "stop"
    assert column.usage == Usage(26, 4, "server")
    server = column.server
    assert server is not None
    assert server.decode_tokens_per_s == pytest.approx(4 / 0.080)  # eval_count / eval_duration (ns)
    assert server.prompt_eval_s == pytest.approx(0.130)
    assert server.load_s == pytest.approx(1.0)
    assert server.total_s == pytest.approx(1.25)
    assert (server.output_tokens, server.prompt_tokens) == (4, 26)
    metrics = column.metrics()
    assert (metrics.output_tokens, metrics.tokens_source) == (4, "server")
    assert metrics.ttft_s is not None and metrics.ttft_s < 5  # our own clock, not the server's


async def test_parameters_and_keep_alive_arrive_as_ollama_options(stub):
    request = chat("Why is the sky blue?", system="Be brief.", temperature=0.3, top_p=0.9, max_tokens=77, seed=42)
    column = await run_one(target(stub.base_url, keep_alive="7m"), request)
    assert column.status == "done", column.error
    [body] = stub.chats()
    assert body["model"] == "phi3.5"
    assert body["stream"] is True
    assert body["keep_alive"] == "7m"
    assert body["options"] == {"temperature": 0.3, "top_p": 0.9, "num_predict": 77, "seed": 42}
    assert body["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Why is the sky blue?"}]


async def test_no_seed_and_no_keep_alive_are_left_to_the_server(stub):
    await run_one(target(stub.base_url), chat(temperature=0.0))
    [body] = stub.chats()
    assert "seed" not in body["options"] and body["options"]["temperature"] == 0.0
    assert "keep_alive" not in body


async def test_model_not_pulled_says_ollama_pull(stub):
    backend = OllamaBackend(target(stub.base_url, model="phi4"))
    with pytest.raises(BackendError) as info:
        async for _ in backend.stream(chat()):
            pass
    assert info.value.kind is ErrorKind.NOT_FOUND
    assert "run: ollama pull phi4" in info.value.message
    assert 'model "phi4" not found' in info.value.message  # the server's own words


async def test_server_error_500_is_a_clear_server_error(stub):
    stub.mode = "500"
    column = await run_one(target(stub.base_url))
    assert column.status == "error"
    assert column.error_kind is ErrorKind.SERVER
    assert "500" in column.error and "llama runner process has terminated" in column.error


async def test_connection_refused_says_ollama_serve(free_port):
    backend = OllamaBackend(target(f"http://127.0.0.1:{free_port}"))
    events: list[Event] = []
    with pytest.raises(BackendError) as info:
        async for event in backend.stream(chat()):
            events.append(event)
    assert info.value.kind is ErrorKind.CONNECTION
    assert "ollama serve" in info.value.message and str(free_port) in info.value.message
    assert not any(isinstance(e, (TextDelta, Finished)) for e in events)


@pytest.mark.parametrize("mode, kind", [("cut", ErrorKind.TRUNCATED), ("no_done", ErrorKind.TRUNCATED),
                                        ("error_line", ErrorKind.SERVER)])
async def test_a_broken_stream_is_an_error_never_a_success(stub, mode, kind):
    stub.mode = mode
    column = await run_one(target(stub.base_url))
    assert column.status == "error", f"{mode} ended as {column.status}"
    assert column.error_kind is kind
    assert column.text == ("Hello from Ollama!" if mode == "no_done" else "Hello from")  # kept as it came
    assert column.server is None and column.usage is None
    if kind is ErrorKind.TRUNCATED:
        assert column.error.startswith("stream cut after")


def test_availability_from_api_tags(stub, free_port):
    assert OllamaBackend(target(stub.base_url)).availability() == READY
    assert OllamaBackend(target(stub.base_url, model="phi3.5:latest")).availability() == READY
    missing = OllamaBackend(target(stub.base_url, model="phi3:14b")).availability()
    assert missing.state == "unavailable" and "run: ollama pull phi3:14b" in missing.reason
    down = OllamaBackend(target(f"http://127.0.0.1:{free_port}")).availability()
    assert down.state == "unavailable" and "ollama serve" in down.reason


def test_availability_is_cached_briefly_per_host(stub):
    tags_calls = lambda: sum(1 for _, path, _ in stub.requests if path == "/api/tags")  # noqa: E731
    for model in ("phi3.5", "phi4", "phi4-mini"):
        OllamaBackend(target(stub.base_url, model=model)).availability()
    assert tags_calls() == 1
    stub.models.append("phi4:latest")  # pulled meanwhile: seen after an explicit refresh
    assert OllamaBackend(target(stub.base_url, model="phi4")).availability().state == "unavailable"
    ollama_native.refresh_tags(stub.base_url)
    assert OllamaBackend(target(stub.base_url, model="phi4")).availability() == READY
    assert tags_calls() == 2


async def test_refresh_off_the_event_loop_fills_the_cache(stub):
    await asyncio.to_thread(ollama_native.refresh_tags, stub.base_url)
    assert len(stub.requests) == 1
    assert OllamaBackend(target(stub.base_url)).availability() == READY
    assert len(stub.requests) == 1  # answered from the cache


async def test_unavailable_target_never_runs(free_port):
    column = await run_one(target(f"http://127.0.0.1:{free_port}"))
    assert column.status == "error" and column.error_kind is ErrorKind.UNAVAILABLE
    assert "ollama serve" in column.error


class SilentBackend:
    """A backend that reports no server timings at all."""

    name = "fake"
    supports_vision = False

    def availability(self):
        return READY

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        yield RequestSent()
        yield TextDelta("a", tokens=1)
        yield TextDelta("b", tokens=1)
        yield Usage(3, 2, "counted")
        yield Finished("stop")


async def test_server_timings_reach_table_json_and_csv(stub, tmp_path):
    ollama_target = target(stub.base_url)
    quiet_target = Target(id="quiet", label="quiet", backend="openai", model="m", base_url="http://127.0.0.1:9")
    jobs = [Job(ollama_target, chat()), Job(quiet_target, chat())]
    columns = []
    async for columns in Run(jobs, frame_s=0.01, backends=[OllamaBackend(ollama_target), SilentBackend()]).frames():
        pass
    ollama_col, quiet_col = columns
    assert ollama_col.status == "done" and quiet_col.status == "done"

    row = table_row(ollama_col)
    assert row["server tok/s"] == 50.0 and row["prompt eval (s)"] == 0.13 and row["load (s)"] == 1.0
    frame = results_frame(columns)
    assert list(frame["server tok/s"][:1]) == [50.0] and frame["load (s)"].isna().tolist() == [False, True]
    quiet_row = table_row(quiet_col)
    assert quiet_row["server tok/s"] is None and quiet_row["load (s)"] is None

    entry = result_entry(ollama_col)
    assert entry["server"]["decode_tokens_per_s"] == 50.0
    assert entry["server"]["prompt_eval_s"] == 0.13 and entry["server"]["load_s"] == 1.0
    assert entry["server"]["output_tokens"] == 4
    assert result_entry(quiet_col)["server"] is None

    document = run_document("Say hello", None, make_params(), columns)
    csv_path, json_path = write_exports(document, tmp_path)
    assert json.loads(json_path.read_text())["results"][1]["server"] is None
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    assert rows[0]["server_decode_tokens_per_s"] == "50.0" and rows[0]["server_load_s"] == "1.0"
    assert rows[1]["server_decode_tokens_per_s"] == ""  # same columns, empty: nothing reported


def test_cli_json_carries_the_server_object(stub, tmp_path, clean_env):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "targets:\n"
        f"  - {{id: ollama/stub, label: Stub, backend: ollama, model: phi3.5, base_url: '{stub.base_url}'}}\n",
        encoding="utf-8",
    )
    env = clean_env()
    env.pop("OLLAMA_HOST", None)
    done = subprocess.run(
        [sys.executable, "-m", "playground", "run", "--json", "--catalog", str(catalog),
         "--targets", "ollama/stub", "--prompt", "Say hello"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)["results"]
    assert result["status"] == "ok" and result["text"] == "Hello from Ollama!"
    assert result["server"]["decode_tokens_per_s"] == 50.0
    assert result["server"]["prompt_eval_s"] == 0.13
    assert result["server"]["load_s"] == 1.0
    assert result["server"]["output_tokens"] == 4
    assert result["tokens_source"] == "server" and result["output_tokens"] == 4


async def test_images_arrive_as_base64_and_text_only_targets_get_none(stub, tmp_path):
    import base64
    import io

    from PIL import Image

    from playground.images import prepare_image

    path = tmp_path / "chart.png"
    picture = Image.new("RGB", (640, 480), (200, 30, 30))
    picture.paste((30, 30, 200), (320, 0, 640, 480))
    picture.save(path)
    prepared = prepare_image(path)
    request = ChatRequest(build_messages("What colours?", images=(prepared,)), make_params(max_tokens=8))
    vision = target(stub.base_url, vision=True)
    text_only = Target(id="ollama/text", label="text · Ollama stub", backend="ollama", model="phi3.5",
                       base_url=stub.base_url)
    columns = await run_to_end([Job(vision, request), Job(text_only, request)], frame_s=0.01)
    assert [c.status for c in columns] == ["done", "done"], [c.error for c in columns]
    chats = stub.chats()
    assert len(chats) == 2
    carrying = [c for c in chats if "images" in c["messages"][-1]]
    assert len(carrying) == 1, "exactly one of the two requests (the vision target's) carries the image"
    with_image, without = carrying[0], next(c for c in chats if c is not carrying[0])
    encoded = with_image["messages"][-1]["images"]
    assert len(encoded) == 1
    received = Image.open(io.BytesIO(base64.b64decode(encoded[0])))
    assert received.size == (640, 480)
    assert received.convert("RGB").getpixel((10, 10)) == pytest.approx((200, 30, 30), abs=12)
    assert received.convert("RGB").getpixel((630, 470)) == pytest.approx((30, 30, 200), abs=12)
    assert all("images" not in m for m in without["messages"])
    assert columns[1].notices == ["text only: image not sent"]


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, -1])
def test_a_key_across_the_300_character_cut_leaves_no_half_of_itself(monkeypatch, status):
    import ollama

    key = "ollama-canary-" + "k" * 30
    monkeypatch.setenv("OLLAMA_API_KEY", key)
    text = "x" * (300 - len(key) // 2) + key + " and more"  # the cut at 300 falls in the key's middle
    error = ollama_native.map_error(ollama.ResponseError(text, status), Target(
        id="o", label="o", backend="ollama", model="m"), "http://127.0.0.1:9")
    assert key[: len(key) // 2] not in str(error) and "ollama-canary" not in str(error)
    assert "***" in str(error)
    malformed = ollama_native.map_error(ValueError("y" * (200 - len(key) // 2) + key), Target(
        id="o", label="o", backend="ollama", model="m"), "http://127.0.0.1:9")
    assert "ollama-canary" not in str(malformed)
