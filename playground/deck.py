"""A presenter's prompt deck: a YAML file (``PLAYGROUND_DECK``) of steps, each a prompt with
optional targets, system prompt and parameters, and optionally a recorded run to replay instead
of running live (a run id of the run database, or an exported run file).

    - prompt: Explain in three sentences why the sky is blue.
      targets: [smollm2-onnx, smollm2-openvino]
      temperature: 0
      max_tokens: 96
    - prompt: Write a haiku about debugging.
      replay: runs/haiku.json      # relative paths are read from the deck's folder
    - prompt: What is in this picture?
      images: [photos/harbour.jpg]
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from playground import records
from playground.images import ImageError, prepare_images
from playground.request import MAX_NEW_TOKENS_LIMIT, MAX_PROMPT_CHARS
from playground.settings import MAX_COLUMNS


class DeckError(Exception):
    """A deck that cannot be used: the file, the step and the field."""


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    system: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    targets: list[str] | None = Field(None, min_length=1, max_length=MAX_COLUMNS)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    seed: int | None = None
    replay: str | None = None  # a recorded run's id, or a run file (relative to the deck's folder)
    images: list[str] | None = Field(None, max_length=8)  # files, relative to the deck's folder


def load(path: str | Path) -> list[Step]:
    file = Path(path).expanduser()
    try:
        data: Any = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DeckError(f"{file}: cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        raise DeckError(f"{file}: not YAML: {str(exc).splitlines()[0]}") from None
    if isinstance(data, dict) and "steps" in data:
        data = data["steps"]
    if not isinstance(data, list) or not data or len(data) > 200:
        raise DeckError(f"{file}: a deck is a list of 1 to 200 steps, each with a prompt")
    steps = []
    for number, entry in enumerate(data, start=1):
        try:
            step = Step.model_validate(entry)
        except ValidationError as exc:
            problem = exc.errors()[0]
            field = ".".join(str(p) for p in problem["loc"]) or "step"
            raise DeckError(f"{file}: step {number}: {field}: {problem['msg']}") from None
        # each file read now, as a step would: found broken at start-up, not by the presenter mid-talk
        for image in step.images or []:
            if not resolve(image, file).is_file():
                raise DeckError(f"{file}: step {number}: images: no file {image!r}")
            try:
                prepare_images([resolve(image, file)])
            except ImageError as exc:
                raise DeckError(f"{file}: step {number}: images: {exc}") from None
        if step.replay:
            kind, run_file = replay_source(step, file)
            if kind == "file" and run_file is not None and not run_file.is_file():
                raise DeckError(f"{file}: step {number}: replay: no file {step.replay!r}")
            if kind == "file" and run_file is not None:
                try:
                    records.read_export(run_file)
                except records.RecordError as exc:
                    raise DeckError(f"{file}: step {number}: replay: {step.replay}: {exc}") from None
        steps.append(step)
    return steps


def resolve(name: str, deck_path: str | Path) -> Path:
    """A path the deck names, relative to the deck's folder unless absolute."""
    path = Path(name).expanduser()
    return path if path.is_absolute() else Path(deck_path).expanduser().parent / path


def replay_source(step: Step, deck_path: str | Path) -> tuple[str, Path | None]:
    """What ``step.replay`` names: ("id", None) for a run id, ("file", PATH) for a run file."""
    assert step.replay is not None
    candidate = resolve(step.replay, deck_path)
    if step.replay.endswith(".json") or candidate.is_file():
        return "file", candidate
    return "id", None


def staged_images(step: Step, deck_path: str | Path, uploads: str | Path) -> list[str]:
    """The step's images, copied where the page's own uploads live (so that the prompt box can show
    them and a run accepts them as uploaded); the copies are named by content, made once."""
    staged = []
    for name in step.images or []:
        source = resolve(name, deck_path)
        data = source.read_bytes()
        folder = Path(uploads) / "deck" / hashlib.sha256(data).hexdigest()[:20]
        target = folder / source.name
        if not target.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        staged.append(str(target))
    return staged
