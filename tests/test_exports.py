"""Export folders: one per session, the newest few kept, old ones removed whoever made them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from playground import exports


@pytest.fixture(autouse=True)
def private_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    return tmp_path / exports.ROOT_NAME


def test_a_session_keeps_its_newest_runs_only(private_root: Path) -> None:
    made = []
    for _ in range(5):
        made.append(exports.new_folder("session-a"))
        (made[-1] / "phi-playground-run.csv").write_text("x")
    theirs = exports.new_folder("session-z")
    alive = [f for f in made if f.exists()]
    assert alive == made[-exports.KEEP_PER_SESSION:]
    assert theirs.exists()  # another session's runs are not counted against this one
    assert "session-a" not in str(made[0])  # the session id never reaches a path (or a download URL)
    # Gradio serves a download by its path, to whoever asks: a run's folder carries a whole uuid4
    assert all(len(folder.name.split("-", 1)[1]) == 32 for folder in made)


def test_old_runs_of_any_session_are_removed(private_root: Path) -> None:
    old = exports.new_folder("session-b")
    hour_ago = os.stat(old).st_mtime - exports.KEEP_S - 1
    os.utime(old, (hour_ago, hour_ago))
    other = exports.new_folder("session-c")
    assert not old.exists() and not old.parent.exists()
    assert other.exists()


async def test_gradio_serves_a_download_from_where_it_was_written(private_root: Path) -> None:
    """A run's files are written inside Gradio's folder for served files, so that Gradio neither
    hashes nor copies them on its event loop (it did both, for each of a run's two files)."""
    import gradio as gr

    path = exports.new_folder("session-d") / "phi-playground-run.json"
    path.write_text("{}")
    with gr.Blocks() as demo:
        pass
    assert demo.GRADIO_CACHE == str(private_root.parent)
    served = await demo.async_move_resource_to_block_cache(path)
    assert served == str(path)
    copies = [p for p in private_root.parent.rglob(path.name) if private_root not in p.parents]
    assert copies == []
