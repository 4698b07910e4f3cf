"""Targets (a model on a backend) from the built-in YAML plus an optional user catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, model_validator

from playground import settings
from playground.backends import REGISTRY, backend_class
from playground.backends.base import BackendOptions

BUILTIN_CATALOG = Path(__file__).with_name("catalog.yaml")
CATALOG_ENV = "PLAYGROUND_CATALOG"
class CatalogError(ValueError):
    """A catalog that cannot be used, with a message naming the file, target and field."""


class Target(BaseModel):
    """A model on a backend: the fields every backend shares, and the backend's own ``options``.

    A catalog entry is flat (``gguf_file: …`` beside ``model: …``); the fields this class does not
    know go to the backend's ``Options`` model, which refuses any it does not use.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$", max_length=80)
    label: str = Field(min_length=1, max_length=120)
    backend: str
    model: str = Field(min_length=1)
    vision: bool = False
    context_length: int | None = Field(None, ge=16)
    notes: str | None = None
    timeout_s: float = Field(180.0, gt=0, le=3600)
    max_image_side: int | None = Field(None, ge=64, le=8192)  # pixels; the prepared copy is at most 1536
    max_images: int | None = Field(None, ge=1, le=32)  # per request; vision targets default to 4
    options: SerializeAsAny[BackendOptions] = Field(default_factory=BackendOptions)

    @model_validator(mode="before")
    @classmethod
    def _backend_options(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        backend = data.get("backend")
        if not isinstance(backend, str) or backend not in REGISTRY:
            raise ValueError(f"backend: unknown backend {backend!r}; known: {', '.join(sorted(REGISTRY))}")
        common = {k: v for k, v in data.items() if k in cls.model_fields and k != "options"}
        given = data.get("options") or {}
        if isinstance(given, BaseModel):
            given = given.model_dump(exclude_defaults=True)
        if not isinstance(given, dict):
            raise ValueError("options: must be a mapping of the backend's own fields (or give them beside model:)")
        own = {**given, **{k: v for k, v in data.items() if k not in cls.model_fields}}
        options_model = backend_class(backend).Options
        try:
            common["options"] = options_model.model_validate(own)
        except ValidationError as exc:
            raise ValueError(_options_problem(exc, backend)) from None
        return common

    @model_validator(mode="after")
    def _check(self) -> Target:
        if getattr(self.options, "max_image_bytes", None) is not None and not self.vision:
            raise ValueError("max_image_bytes: only used by vision targets (vision: true)")
        for name in ("max_image_side", "max_images"):
            if getattr(self, name) is not None and not self.vision:
                raise ValueError(f"{name}: only used by vision targets (vision: true)")
        return self


def _options_problem(exc: ValidationError, backend: str) -> str:
    """One line for the first problem with a backend's own fields; never the value given."""
    error = exc.errors()[0]
    field = ".".join(str(p) for p in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        used_elsewhere = any(field in backend_class(other).Options.model_fields for other in REGISTRY)
        return f"{field}: not used by backend {backend!r}" if used_elsewhere else f"field {field!r}: unknown field"
    return f"field {field!r}: {message}" if field else message


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    targets: list[Target]
    defaults: list[str] = Field(default_factory=list)

    def get(self, target_id: str) -> Target:
        for target in self.targets:
            if target.id == target_id:
                return target
        known = ", ".join(t.id for t in self.targets)
        raise KeyError(f"unknown target {target_id!r}; known targets: {known}")

    @property
    def ids(self) -> list[str]:
        return [t.id for t in self.targets]


def _describe(exc: ValidationError, raw: Any) -> str:
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "targets" and isinstance(loc[1], int):
            index = loc[1]
            entry = raw["targets"][index] if isinstance(raw.get("targets"), list) else None
            tid = entry.get("id") if isinstance(entry, dict) else None
            where = f"target {tid!r}" if tid else f"target #{index + 1}"
            loc = loc[2:]
        field = ".".join(str(p) for p in loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        if field and not msg.startswith(field + ":"):
            msg = f"field {field!r}: {msg}"
        lines.append(f"{where}: {msg}" if where else msg)
    return "; ".join(lines)


def read_catalog_file(path: Path) -> Catalog:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"catalog {path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise CatalogError(f"catalog {path}: not UTF-8 text (invalid byte at offset {exc.start})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise CatalogError(f"catalog {path}: not valid YAML{where}") from None
    if not isinstance(raw, dict) or "targets" not in raw:
        raise CatalogError(f"catalog {path}: expected a mapping with a 'targets:' list at the top")
    try:
        catalog = Catalog.model_validate(raw)
    except ValidationError as exc:
        raise CatalogError(f"catalog {path}: {_describe(exc, raw)}") from None
    seen: set[str] = set()
    for target in catalog.targets:
        if target.id in seen:
            raise CatalogError(f"catalog {path}: target {target.id!r}: field 'id': appears twice")
        seen.add(target.id)
    return catalog


def load_catalog(user_file: str | Path | None = None) -> Catalog:
    """The built-in catalog, with the user's targets added or overriding by id."""
    catalog = read_catalog_file(BUILTIN_CATALOG)
    user_file = user_file or settings.catalog_file()
    if not user_file:
        return catalog
    user = read_catalog_file(Path(user_file).expanduser())
    merged = {t.id: t for t in catalog.targets}
    for target in user.targets:
        merged[target.id] = target
    defaults = user.defaults or catalog.defaults
    result = Catalog(targets=list(merged.values()), defaults=defaults)
    for target_id in result.defaults:
        if target_id not in merged:
            raise CatalogError(f"catalog {user_file}: defaults: unknown target {target_id!r}")
    return result
