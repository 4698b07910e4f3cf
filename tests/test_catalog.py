"""The catalog: built-in targets, user overrides, refusals that name file/target/field, availability."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from playground.backends import REGISTRY, make_backend
from playground.catalog import CATALOG_ENV, CatalogError, load_catalog, read_catalog_file

ROOT = Path(__file__).resolve().parents[1]
GOOD = """
- id: {id}
  label: Mine
  backend: openai
  model: my-model
  base_url: http://127.0.0.1:9/v1
"""


def write(tmp_path: Path, text: str, name: str = "user.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def no_user_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CATALOG_ENV, raising=False)


def test_builtin_catalog_loads() -> None:
    catalog = load_catalog()
    assert len(catalog.ids) == len(set(catalog.ids)) >= 10
    assert "github/phi-4-mini-instruct" in catalog.ids
    assert set(catalog.defaults) <= set(catalog.ids) and catalog.defaults
    for target in catalog.targets:
        assert target.backend in REGISTRY
        if target.backend == "openai":
            assert getattr(target.options, "base_url", None) or getattr(target.options, "base_url_env", None)
    with pytest.raises(KeyError, match="nope"):
        catalog.get("nope")


def test_user_catalog_overrides_and_adds_by_id(tmp_path: Path) -> None:
    path = write(tmp_path, """
        targets:
          - {id: github/phi-4, label: My Phi-4, backend: openai, model: microsoft/Phi-4,
             base_url: "http://127.0.0.1:9/v1", timeout_s: 12}
          - {id: mine/local, label: Mine, backend: openai, model: m, base_url: "http://127.0.0.1:9/v1"}
        """)
    builtin = load_catalog()
    merged = load_catalog(path)
    assert merged.get("github/phi-4").label == "My Phi-4"
    assert merged.get("github/phi-4").timeout_s == 12
    assert getattr(merged.get("github/phi-4").options, "api_key_env", None) is None  # replaced whole, not field by field
    assert merged.get("mine/local").model == "m"
    assert len(merged.ids) == len(builtin.ids) + 1
    assert merged.ids.index("github/phi-4") == builtin.ids.index("github/phi-4")  # keeps its place
    assert merged.defaults == builtin.defaults


def test_user_catalog_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CATALOG_ENV, str(write(tmp_path, "targets:" + GOOD.format(id="env/one"))))
    assert "env/one" in load_catalog().ids


def test_user_defaults_must_exist(tmp_path: Path) -> None:
    path = write(tmp_path, "defaults: [ghost]\ntargets:" + GOOD.format(id="a"))
    with pytest.raises(CatalogError, match="ghost"):
        load_catalog(path)


BAD = {
    "invalid_yaml": ("targets: [\n  - {id: a, label: b", None, None),
    "missing_targets": ("defaults: []\n", None, "targets"),
    "unknown_backend": ("targets:\n  - {id: t1, label: L, backend: telepathy, model: m}", "t1", "backend"),
    "unknown_field": ("targets:\n  - {id: t2, label: L, backend: openai, model: m, "
                      "base_url: 'http://127.0.0.1:9', colour: blue}", "t2", "colour"),
    "key_not_env_name": ("targets:\n  - {id: t3, label: L, backend: openai, model: m, "
                         "base_url: 'http://127.0.0.1:9', api_key_env: sk-abc123DEF456}", "t3", "api_key_env"),
    "openai_without_base_url": ("targets:\n  - {id: t4, label: L, backend: openai, model: m}", "t4", "base_url"),
    "duplicate_id": ("targets:" + GOOD.format(id="t5") + GOOD.format(id="t5"), "t5", "id"),
    "wrong_backend_field": ("targets:\n  - {id: t6, label: L, backend: onnx, model: m, source: hub, "
                            "dtype: float16}", "t6", "dtype"),
    "http_field_on_local": ("targets:\n  - {id: t7, label: L, backend: transformers, model: m, "
                            "api_key_env: HF_TOKEN}", "t7", "api_key_env"),
    "key_on_ollama": ("targets:\n  - {id: t8, label: L, backend: ollama, model: m, api_key_env: MY_KEY}",
                      "t8", "api_key_env"),
    "options_not_a_mapping": ("targets:\n  - {id: t9, label: L, backend: onnx, model: m, options: fast}",
                              "t9", "options"),
    "backend_not_a_name": ("targets:\n  - {id: t10, label: L, backend: [onnx], model: m}", "t10", "backend"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_catalog_is_refused_naming_file_target_and_field(tmp_path: Path, case: str) -> None:
    text, target, field = BAD[case]
    path = write(tmp_path, text, name=f"{case}.yaml")
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    message = str(info.value)
    assert str(path) in message
    if target:
        assert repr(target) in message  # "target 't1'"
    if field:
        assert field in message
    if case == "invalid_yaml":
        assert "not valid YAML" in message and "line" in message
    if case == "key_not_env_name":
        assert "NAME of an environment variable" in message
        assert "sk-abc123DEF456" not in message  # a key put there by mistake is never echoed


def test_unreadable_catalog(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        read_catalog_file(tmp_path / "missing.yaml")


def test_availability_follows_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    target = load_catalog().get("github/phi-4-mini-instruct")
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    missing = make_backend(target).availability()
    assert missing.state == "unavailable" and not missing.runnable
    assert "set GITHUB_TOKEN" in missing.reason
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_fake")
    assert make_backend(target).availability().state == "ready"


def test_availability_names_endpoint_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    target = load_catalog().get("azure/phi-4")
    monkeypatch.delenv("AZURE_AI_ENDPOINT", raising=False)
    monkeypatch.delenv("AZURE_AI_API_KEY", raising=False)
    reason = make_backend(target).availability().reason
    assert "AZURE_AI_ENDPOINT" in reason and "AZURE_AI_API_KEY" in reason
    monkeypatch.setenv("AZURE_AI_ENDPOINT", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("AZURE_AI_API_KEY", "fake")
    assert make_backend(target).availability().runnable


HEAVY_CHECK = """
import json, sys
from playground.catalog import load_catalog
from playground.backends import REGISTRY, make_backend
states = {t.id: make_backend(t).availability().state for t in load_catalog().targets}
heavy = [m for m in ("torch", "transformers", "onnxruntime_genai") if m in sys.modules]
print(json.dumps({"heavy": heavy, "targets": len(states)}))
"""


def test_catalog_and_availability_import_no_heavy_library() -> None:
    done = subprocess.run([sys.executable, "-c", HEAVY_CHECK], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["targets"] >= 10
    assert result["heavy"] == []


def test_the_registry_the_catalog_and_the_readme_agree_on_the_backends() -> None:
    from playground.backends import REGISTRY, backend_class
    from playground.backends import http_backends, local_backends

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("| backend | module | library | runs |", 1)[1].split("\n\n", 1)[0]
    rows = {line.split("|")[1].strip(" `"): line.split("|")[2].strip(" `")
            for line in table.strip().splitlines()[1:]}
    assert set(REGISTRY) == http_backends() | local_backends() == set(rows)
    assert not http_backends() & local_backends()
    for name, module in rows.items():
        assert REGISTRY[name].split(":")[0] == f"playground.backends.{module.removesuffix('.py')}"
        assert backend_class(name).name == name


def test_a_new_http_backend_is_one_registry_line_for_the_measurement_process_and_the_record(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Which backends stream in the measurement process and are recorded as an endpoint follows
    from the registry (their ``HttpOptions``), not from a list of names."""
    from types import SimpleNamespace

    from playground import environment, measure_process
    from playground.backends import http_backends, local_backends

    monkeypatch.setitem(REGISTRY, "another-server", REGISTRY["openai"])
    http_backends.cache_clear()
    local_backends.cache_clear()
    measure_process.use(True)
    try:
        target = SimpleNamespace(id="t", backend="another-server", model="m", options=SimpleNamespace())
        assert measure_process.takes(target)  # type: ignore[arg-type]
        assert environment.target_facts(target)["endpoint"] is None  # type: ignore[arg-type]
        assert "file" not in environment.target_facts(target)  # type: ignore[arg-type]
        assert not measure_process.takes(SimpleNamespace(backend="openvino"))  # type: ignore[arg-type]
    finally:
        measure_process.use(False)
        monkeypatch.undo()
        http_backends.cache_clear()
        local_backends.cache_clear()


def test_a_catalog_that_is_not_utf8_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CatalogError, match="not UTF-8 text") as info:
        read_catalog_file(path)
    assert str(info.value).startswith(f"catalog {path}: ")


APP_CATALOGS = {
    "duplicate id": (textwrap.dedent(GOOD.format(id="twice")) * 2, "field 'id': appears twice"),
    "not utf-8": (b"\xff\xfe\x00garbage", "not UTF-8 text"),
}


@pytest.mark.parametrize("case", list(APP_CATALOGS))
def test_app_py_reports_a_bad_catalog_in_one_line_without_a_traceback(case: str, tmp_path: Path, clean_env) -> None:
    content, fragment = APP_CATALOGS[case]
    path = tmp_path / "bad.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text("targets:" + content, encoding="utf-8")
    done = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=clean_env(**{CATALOG_ENV: str(path)}), check=False)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == next(
        line for line in done.stderr.splitlines() if line.startswith("error: "))
    assert f"error: catalog {path}: " in done.stderr and fragment in done.stderr, done.stderr[-2000:]
