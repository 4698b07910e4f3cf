"""The code behind each column: every backend's snippet runs as a program of its own against the
loopback servers and the bundled model, and answers; no snippet holds a key."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from playground.catalog import Catalog, Target
from playground.models import module_installed
from playground.request import ChatRequest, build_messages, make_params
from playground.snippets import snippet
from tests.ollama_server import OllamaStub
from tests.sse_server import Script, ScriptedServer
from tests.test_local_backends import onnx_model_dir  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-snippet-SECRET-5150"


def chat(**params: Any) -> ChatRequest:
    return ChatRequest(build_messages("Name a colour.", "Answer in a few words."),
                       make_params(temperature=0, max_tokens=8, **params))


def run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The snippet as a user runs it: a file of its own, in a folder of its own (the playground's
    package is not importable there)."""
    with tempfile.TemporaryDirectory() as folder:
        program = Path(folder) / "snippet.py"
        program.write_text(code, encoding="utf-8")
        return subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=300,
                              cwd=folder, env=env)


def test_the_openai_snippet_answers_and_reads_its_key_from_the_variable(clean_env: Any) -> None:
    with ScriptedServer({"five": Script(tokens=5)}) as server:
        target = Target(id="s", label="scripted", backend="openai", model="five", base_url=server.base_url,
                        api_key_env="SNIPPET_KEY")
        code = snippet(target, chat(seed=7))
        done = run(code, clean_env(SNIPPET_KEY=KEY))
        sent = server.chat_requests("five")[-1]
    assert KEY not in code and "os.environ['SNIPPET_KEY']" in code
    assert done.returncode == 0, done.stderr[-1500:]
    assert done.stdout.strip() == "t0 t1 t2 t3 t4"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body["messages"] == [{"role": "system", "content": "Answer in a few words."},
                                     {"role": "user", "content": "Name a colour."}]
    assert (sent.body["temperature"], sent.body["max_tokens"], sent.body["seed"]) == (0.0, 8, 7)
    assert sent.body["stream_options"] == {"include_usage": True}  # the request the playground sends


def test_a_typed_url_and_key_stay_in_their_variables() -> None:
    target = Target(id="yours/openai", label="Your endpoint", backend="openai", model="(your model)",
                    base_url_env="PLAYGROUND_USER_BASE_URL", model_env="PLAYGROUND_USER_MODEL",
                    api_key_env="PLAYGROUND_USER_API_KEY")
    code = snippet(target, chat())
    assert "os.environ['PLAYGROUND_USER_BASE_URL']" in code and "os.environ['PLAYGROUND_USER_API_KEY']" in code
    assert "os.environ.get('PLAYGROUND_USER_MODEL')" in code


def test_a_backend_without_a_writer_gets_a_placeholder_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer is optional for a new backend: the Code panel says there is none yet."""
    from playground import snippets

    monkeypatch.delitem(snippets.WRITERS, "openvino")
    target = Target(id="ov", label="ov", backend="openvino", model="SmolLM2-135M-Instruct", source="bundled")
    assert snippet(target, chat()) == "# no snippet for the openvino backend yet\n"


def test_the_ollama_snippet_answers(clean_env: Any) -> None:
    with OllamaStub() as stub:
        target = Target(id="o", label="ollama", backend="ollama", model="phi3.5")
        done = run(snippet(target, chat()), clean_env(OLLAMA_HOST=stub.base_url))
        [(_, _, body)] = [r for r in stub.requests if r[1] == "/api/chat"]
    assert done.returncode == 0, done.stderr[-1500:]
    assert done.stdout.strip() == "Hello from Ollama!"
    assert body["options"]["num_predict"] == 8 and body["messages"][1]["content"] == "Name a colour."


def test_the_ollama_snippet_sends_ollama_api_key_to_ollama_host_only(clean_env: Any) -> None:
    """As the app: a target on a host of its own gets no key (the stub echoes what it was sent)."""
    with OllamaStub(modes={"phi3.5": "401"}) as stub:
        target = Target(id="o", label="ollama", backend="ollama", model="phi3.5", base_url=stub.base_url)
        done = run(snippet(target, chat()), clean_env(OLLAMA_API_KEY=KEY))
        ours = run(snippet(target, chat()), clean_env(OLLAMA_API_KEY=KEY, OLLAMA_HOST=stub.base_url + "/"))
    assert done.returncode != 0 and "unauthorized: key ''" in done.stderr, done.stderr[-1500:]
    assert KEY not in done.stdout + done.stderr
    assert f"unauthorized: key '{KEY}'" in ours.stderr, ours.stderr[-1500:]  # OLLAMA_HOST's server: it goes


@pytest.mark.parametrize("target_id", ["smollm2-llamacpp", "smollm2-openvino", "smollm2-transformers",
                                       "smollm2-onnx"])
def test_each_local_snippet_answers_on_the_bundled_model(target_id: str, builtin_catalog: Catalog,
                                                         bundled_gguf: Path, clean_env: Any,
                                                         request: pytest.FixtureRequest) -> None:
    module = {"smollm2-llamacpp": "llama_cpp", "smollm2-openvino": "openvino_genai"}.get(target_id)
    if module and not module_installed(module):
        pytest.skip(f"{module} is not installed")
    if target_id == "smollm2-onnx":
        request.getfixturevalue("onnx_model_dir")
    code = snippet(builtin_catalog.get(target_id), chat())
    done = run(code, clean_env())  # as shown: llama.cpp's loads its weights as the app does (AMX faults here)
    assert done.returncode == 0, done.stderr[-1500:]
    assert done.stdout.strip(), "the program printed no answer"

