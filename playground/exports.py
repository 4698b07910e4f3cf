"""Where a run's CSV and JSON downloads are written, and how long they stay.

Each browser session has a folder of its own; a run's files go in a new subfolder, the newest
``KEEP_PER_SESSION`` runs of a session are kept (the page only offers the last one), and any run
folder older than ``KEEP_S`` is removed, whoever it belonged to. Without this, every run of every
visitor left a temporary folder behind for good.
"""

from __future__ import annotations

import hashlib
import shutil
import time
import uuid
from pathlib import Path

KEEP_PER_SESSION = 3
KEEP_S = 3600.0
ROOT_NAME = "phi-playground-exports"


def root() -> Path:
    """Inside Gradio's folder for served files: Gradio then serves a download from where it was
    written, instead of hashing and copying it into that folder on its event loop for every run."""
    from gradio.utils import get_upload_folder  # the page's process has Gradio loaded already

    return Path(get_upload_folder()) / ROOT_NAME


def new_folder(session: str, now: float | None = None) -> Path:
    """A fresh folder for one run's files; prunes old ones first (blocking: call it in a thread)."""
    now = time.time() if now is None else now
    base = root()
    mine = base / hashlib.sha256(session.encode()).hexdigest()[:16]  # no session id on disk or in a URL
    _prune(base, mine, now)
    folder = mine / f"{time.time_ns()}-{uuid.uuid4().hex}"  # Gradio serves it by its path: unguessable
    folder.mkdir(parents=True)
    return folder


def _prune(base: Path, mine: Path, now: float) -> None:
    if not base.is_dir():
        return
    for session_dir in list(base.iterdir()):
        try:  # other sessions prune and write at the same time: a folder may go or come meanwhile
            runs = sorted((p for p in session_dir.iterdir() if p.is_dir()), key=lambda p: p.name) \
                if session_dir.is_dir() else []
            keep = KEEP_PER_SESSION - 1 if session_dir == mine else len(runs)  # room for the new one
            for index, run in enumerate(runs):
                old = now - _mtime(run) > KEEP_S
                if old or index < len(runs) - keep:
                    shutil.rmtree(run, ignore_errors=True)
            if session_dir != mine and session_dir.is_dir() and not any(session_dir.iterdir()):
                session_dir.rmdir()
        except OSError:
            continue


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
