"""The Docker image and the Hugging Face Space, without Docker: the Dockerfile's promises, its build
context, the README's Space front matter, and a replay of the image (scripts/container_smoke.py) that
installs into a fresh venv, builds the ONNX cache, starts ``python app.py`` and gets real answers.

The replay's pip steps use this machine's package sources, as ``make test`` does; the app it starts
binds 127.0.0.1 with the hub offline and no keys."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("container_smoke", REPO_ROOT / "scripts" / "container_smoke.py")
smoke = importlib.util.module_from_spec(_spec)
sys.modules["container_smoke"] = smoke
_spec.loader.exec_module(smoke)

DOCKERFILE = REPO_ROOT / "Dockerfile"
HF_COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}


def pinned(requirements: Path, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}==(\S+)", requirements.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"{requirements.name} does not pin {name}"
    return match.group(1)


def front_matter() -> dict:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n"), "README.md must open with YAML front matter (the Space's configuration)"
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_dockerfile_keeps_its_promises() -> None:
    assert smoke.contract_problems(smoke.parse_dockerfile(DOCKERFILE)) == []


def test_the_contract_check_catches_a_root_image_without_healthcheck(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN pip install -r requirements.txt\nEXPOSE 8000\n"
                   "ENV PLAYGROUND_HOST=127.0.0.1\nCMD [\"python\", \"-m\", \"playground\", \"serve\"]\n")
    problems = "\n".join(smoke.contract_problems(smoke.parse_dockerfile(bad)))
    for expected in ("pinned slim Python", "requirements-nodeps", "prepare", "not uid 1000", "0.0.0.0",
                     "EXPOSE 7860", "HEALTHCHECK", "python app.py"):
        assert expected in problems, f"missed {expected!r} in:\n{problems}"


def test_dockerfile_parsing_joins_continuations_and_drops_comments(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text('# syntax=docker/dockerfile:1\nFROM python:3.11.13-slim-bookworm\n'
                    'ENV A=1 \\\n    # a comment inside\n    B="two words"\n'
                    'RUN --mount=type=cache,target=/root/.cache/pip \\\n    pip install x\n')
    ins = smoke.parse_dockerfile(path)
    assert [i.keyword for i in ins] == ["FROM", "ENV", "RUN"]
    assert smoke.parse_assignments(ins[1].args) == {"A": "1", "B": "two words"}
    assert smoke.split_run(ins[2].args) == (["--mount=type=cache,target=/root/.cache/pip"], "pip install x")
    assert smoke.base_python(ins) == "3.11"


def test_build_context_leaves_out_local_state_and_stays_small() -> None:
    files = smoke.build_context(REPO_ROOT)
    for needed in ("app.py", "requirements.txt", "requirements-nodeps.txt", "playground/ui.py", "playground/catalog.yaml"):
        assert needed in files, f"{needed} missing from the build context"
    for path in files:
        assert not path.startswith((".venv/", ".git/", ".pytest_cache/")), path
        assert "__pycache__" not in path and not path.endswith(".pyc"), path
        assert not Path(path).name.startswith(".env"), path
    assert sum((REPO_ROOT / f).stat().st_size for f in files) < 20_000_000, "the build context is not small"


def test_dockerignore_matching_follows_docker_rules() -> None:
    patterns = [(False, ".venv"), (False, "**/__pycache__"), (False, "**/*.log"), (False, "docs/*.png"),
                (True, "docs/keep.png")]
    assert smoke.ignored(".venv", patterns)
    assert smoke.ignored("playground/backends/__pycache__", patterns)
    assert smoke.ignored("__pycache__", patterns)
    assert smoke.ignored("a/b/run.log", patterns)
    assert smoke.ignored("docs/screenshot.png", patterns)
    assert not smoke.ignored("docs/keep.png", patterns)
    assert not smoke.ignored("docs/sub/screenshot.png", patterns), "* must not cross a /"
    assert not smoke.ignored("playground/venv_tools.py", patterns)


def test_readme_front_matter_is_a_ready_gradio_space() -> None:
    meta = front_matter()
    assert meta["sdk"] == "gradio"
    assert str(meta["sdk_version"]) == pinned(REPO_ROOT / "requirements.txt", "gradio")
    assert (REPO_ROOT / meta["app_file"]).is_file()
    assert str(meta["python_version"]) == smoke.base_python(smoke.parse_dockerfile(DOCKERFILE)), (
        "the Space and the Docker image should run the same Python")
    assert meta["title"] and meta["emoji"]
    assert 0 < len(meta["short_description"]) <= 60, "Spaces cap short_description at 60 characters"
    assert meta["colorFrom"] in HF_COLORS and meta["colorTo"] in HF_COLORS
    assert meta["pinned"] is False


def test_readme_embeds_the_real_screenshot() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/screenshot.png)" in readme
    png = (REPO_ROOT / "docs" / "screenshot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1280, 800), "scripts/screenshot.py takes it at 1280x800"


def test_image_replay_installs_builds_starts_and_answers(tmp_path: Path, bundled_gguf: Path) -> None:
    """Every install and start step of the Dockerfile, in a fresh venv; then HEALTHCHECK, GET / and /run."""
    empty_index = tmp_path / "empty-index"
    empty_index.mkdir()
    root = tmp_path / "image"
    # the CPU torch index is a build argument: here this machine's own package sources stand in for it
    replay = smoke.build(DOCKERFILE, root, {"TORCH_INDEX_URL": empty_index.as_uri()})

    assert [c.split()[0] for c in replay.skipped] == ["useradd"]
    assert len(replay.ran) == 3 and replay.ran[-1].endswith("python -m playground prepare"), replay.ran
    assert (root / "home" / "user" / ".cache" / "huggingface").is_dir()
    # a fresh venv: nothing from this test's environment is importable in it
    assert replay.venv != Path(sys.prefix) and not (replay.venv / "lib").joinpath(
        "python{}.{}".format(*sys.version_info[:2]), "site-packages", "pytest").exists()
    home = Path(replay.run_env["HOME"])
    assert home == root / "home" / "user"
    marker = home / ".cache" / "phi-playground" / "onnx" / "smollm2-135m-instruct-int4-cpu" / ".complete"
    assert marker.is_file(), "the build did not leave a finished ONNX cache"
    built_at = marker.stat().st_mtime

    checked = smoke.start_and_check(replay)
    assert smoke.run_problems(checked) == []
    assert checked["run"]["frames"] > 2, "the run should stream several frames"
    assert marker.stat().st_mtime == built_at and "building ONNX model" not in checked["log"], (
        "the first request rebuilt the ONNX model instead of using the image's cache")
    with pytest.raises(ProcessLookupError):
        os.kill(checked["pid"], 0)  # the app was stopped
