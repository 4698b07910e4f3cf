"""A presenter's prompt deck: a YAML file (``PLAYGROUND_DECK``) of steps, each a prompt with
optional targets, system prompt and parameters, and optionally a recorded run to replay instead
of running live (a run id of the run database, or an exported run file).

    - prompt: Explain in three sentences why the sky is blue.
      targets: [smollm2-onnx, smollm2-openvino]
      temperature: 0
      max_tokens: 96
    - prompt: Write a haiku about debugging.
      replay: runs/haiku.json      # relative paths are read from the deck's folder

Images are not part of a step: attach them by hand when the step needs one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from playground.request import MAX_PROMPT_CHARS
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
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    replay: str | None = None  # a recorded run's id, or a run file (relative to the deck's folder)


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
            steps.append(Step.model_validate(entry))
        except ValidationError as exc:
            problem = exc.errors()[0]
            field = ".".join(str(p) for p in problem["loc"]) or "step"
            raise DeckError(f"{file}: step {number}: {field}: {problem['msg']}") from None
    return steps


def replay_source(step: Step, deck_path: str | Path) -> tuple[str, Path | None]:
    """What ``step.replay`` names: ("id", None) for a run id, ("file", PATH) for a run file."""
    assert step.replay is not None
    candidate = Path(step.replay).expanduser()
    if not candidate.is_absolute():
        candidate = Path(deck_path).expanduser().parent / candidate
    if step.replay.endswith(".json") or candidate.is_file():
        return "file", candidate
    return "id", None
