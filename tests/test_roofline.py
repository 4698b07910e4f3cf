"""The local roofline next to each measured decode rate: in a finished column's status line, in the
results table and in the run's JSON; for bundled, path and hub-loaded models alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from playground import environment, roofline, runner
from playground.catalog import Target
from playground.report import results_frame
from playground.request import ChatRequest, build_messages, make_params
from playground.runner import Job
from playground.ui_format import status_markdown


def chat(tokens: int) -> ChatRequest:
    return ChatRequest(build_messages("Name a colour."), make_params(temperature=0.0, max_tokens=tokens))


@pytest.fixture
def llamacpp(bundled_gguf: Path, builtin_catalog: Any) -> Any:
    pytest.importorskip("llama_cpp")
    return builtin_catalog.get("smollm2-llamacpp")


def shown(ceiling: roofline.Ceiling, rate: float) -> str:
    return f"{ceiling.share(rate) * 100:.0f} % of this machine's ceiling"


async def test_a_finished_local_column_shows_its_share_of_the_ceiling(llamacpp: Any, bundled_gguf: Path) -> None:
    from playground import ui_stream

    remote = Target(id="nowhere", label="nowhere", backend="openai", model="m", base_url="http://127.0.0.1:9/v1")
    [column] = await runner.run_to_end([Job(llamacpp, chat(8))])
    [failed] = await runner.run_to_end([Job(remote, chat(8))])
    assert column.status == "done" and failed.status == "error"
    ceiling = ui_stream._ceiling(column)
    assert ceiling is not None and ceiling.bytes_per_token == bundled_gguf.stat().st_size
    assert ui_stream._ceiling(failed) is None
    rate = column.metrics().decode_tokens_per_s
    assert rate and shown(ceiling, rate) in status_markdown(column, ceiling=ceiling)
    assert "ceiling" not in status_markdown(column)  # the live lines never compute it
    frame = results_frame([column, failed], [ceiling, None])
    assert frame["% of ceiling"][0] == round(ceiling.share(rate) * 100) and frame["% of ceiling"].isna()[1]


def test_the_bandwidth_is_measured_once_per_process() -> None:
    first = roofline.bandwidth_gb_s()
    assert roofline.known_bandwidth() == first and roofline.bandwidth_gb_s() == first and first > 0.1


def fake_hub_cache(root: Path, repo: str, filename: str, source: Path) -> Path:
    """The layout huggingface_hub leaves: a ref naming a commit, a snapshot holding the file."""
    commit = "0" * 39 + "1"
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / filename).symlink_to(source)
    return snapshot / filename


async def test_a_hub_target_gets_the_facts_and_roofline_of_the_cached_file_it_loads(
        llamacpp: Any, bundled_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from playground import ui_stream

    cached = fake_hub_cache(tmp_path, "local/smollm2-hub", bundled_gguf.name, bundled_gguf)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    target = Target(id="smollm2-hub", label="hub", backend="llamacpp", model="local/smollm2-hub", source="hub",
                    gguf_file=bundled_gguf.name)
    assert environment.model_files(target) == [cached]
    facts = environment.target_facts(target)
    assert (facts["file"], facts["quantisation"]) == (bundled_gguf.name, "Q4_1")
    assert facts["fingerprint"] == environment.fingerprint(str(bundled_gguf))
    [column] = await runner.run_to_end([Job(target, chat(4))])  # the backend loads that very file
    assert column.status == "done", column.error
    ceiling = ui_stream._ceiling(column)
    assert ceiling is not None and ceiling.bytes_per_token == bundled_gguf.stat().st_size
    missing = Target(id="not-cached", label="x", backend="llamacpp", model="local/absent", source="hub",
                     gguf_file="x.gguf")
    assert environment.model_files(missing) == [] and roofline.for_target(missing) is None
