"""Every export carries what produced it: library versions, the machine, each target's model files
(the ones actually loaded) or endpoint, and the settings of the run or benchmark."""

from __future__ import annotations

import csv
import io
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from playground import environment, models, repeats, roofline
from playground.catalog import Target
from playground.repeats import Sample
from playground.request import ChatRequest, build_messages, make_params

ENDPOINT = "http://127.0.0.1:9/v1"


def remote() -> Target:
    return Target(id="remote", label="Remote", backend="openai", model="m", base_url=ENDPOINT)


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_the_run_csv_carries_library_versions_model_files_endpoints_and_parameters(
        tmp_path: Path, builtin_catalog: Any, bundled_gguf: Path) -> None:
    from playground import metrics
    from playground.report import run_document, with_environment, write_exports
    from playground.runner import Column

    targets = [builtin_catalog.get("smollm2-llamacpp"), remote()]
    columns = [Column(t, metrics.Timeline(started=0.0), status="done") for t in targets]
    params = make_params(temperature=0.0, max_tokens=12)
    document = with_environment(run_document("hi", None, params, columns), targets)
    csv_path, _ = write_exports(document, tmp_path)
    local, far = read_csv(csv_path.read_text(encoding="utf-8"))
    for row in (local, far):
        assert row["lib_gradio"] == metadata.version("gradio") and "lib_llama-cpp-python" in row
        assert row["env_python"] and row["env_cores"] and row["temperature"] == "0.0" and row["max_tokens"] == "12"
    assert local["model_file"] == bundled_gguf.name and local["model_quantisation"] == "Q4_1"
    assert local["model_fingerprint"] == environment.fingerprint(str(bundled_gguf)) and not local["model_endpoint"]
    assert float(local["model_size_mb"]) == round(bundled_gguf.stat().st_size / 1024**2, 1)
    assert far["model_endpoint"] == ENDPOINT and not far["model_file"]


def test_the_benchmark_csv_carries_its_settings_and_each_targets_model(builtin_catalog: Any,
                                                                       bundled_gguf: Path) -> None:
    targets = [builtin_catalog.get("smollm2-llamacpp"), remote()]
    results = [[Sample(t.id, run, run == 1, run == 1, "done", None, "x", 0.1, 30.0, 0.02, 0.03, 1.0, 8, "server")
                for run in (1, 2, 3)] for t in targets]
    request = ChatRequest(build_messages("hi"), make_params(temperature=0.0, max_tokens=8, seed=7))
    document = repeats.document(targets, results, request, "hi", 2, 1, None, fair=True)
    rows = read_csv(repeats.csv_text(document))
    assert len(rows) == 6
    for row in rows:
        assert (row["repeat"], row["warmup_runs"], row["fair_mode"], row["prompt"]) == ("2", "1", "True", "hi")
        assert (row["temperature"], row["max_tokens"], row["seed"]) == ("0.0", "8", "7")
        assert row["lib_gradio"] == metadata.version("gradio") and row["env_os"]
    local, far = rows[0], rows[3]
    assert local["target"] == "smollm2-llamacpp" and local["model_file"] == bundled_gguf.name
    assert len(local["model_fingerprint"]) == 16 and local["model_quantisation"] == "Q4_1"
    assert far["target"] == "remote" and far["model_endpoint"] == ENDPOINT and not far["model_file"]
    assert read_csv(repeats.csv_text({**document, "targets": []})) == []  # the header alone


def test_the_bundled_onnx_targets_facts_name_the_int4_files_it_loads(builtin_catalog: Any) -> None:
    folder = models.bundled_onnx_dir()
    if not models.is_complete(folder):
        pytest.skip("the bundled ONNX model is not built yet (python -m playground prepare)")
    target = builtin_catalog.get("smollm2-onnx")
    facts = environment.target_facts(target)
    loaded = sorted(p for p in folder.iterdir() if p.name.endswith((".onnx", ".onnx.data")))
    assert facts["file"] == ", ".join(p.name for p in loaded) and ".gguf" not in facts["file"]
    assert facts["quantisation"] == "int4" and facts["built_from"] == models.BUNDLED_GGUF
    assert facts["size_mb"] == round(sum(p.stat().st_size for p in loaded) / 1024**2, 1)
    assert len(facts["fingerprint"]) == 16
    assert roofline.model_bytes(target) == sum(p.stat().st_size for p in loaded)


def test_quantisation_is_read_from_the_file_name_or_its_folder() -> None:
    q = environment._quantisation
    assert q(Path("SmolLM2-135M-Instruct.Q4_1.gguf")) == "Q4_1"
    assert q(Path("Qwen2.5-0.5B-Instruct-Q4_K_M.gguf")) == "Q4_K_M"  # not "Qwen2"
    assert q(Path("cache/smollm2-135m-instruct-int4-cpu/model.onnx.data")) == "int4"
    assert q(Path("model.safetensors")) is None
