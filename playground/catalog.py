"""Targets (a model on a backend) from the built-in YAML plus an optional user catalog."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from playground import secrets, settings
from playground.backends import REGISTRY

BUILTIN_CATALOG = Path(__file__).with_name("catalog.yaml")
CATALOG_ENV = "PLAYGROUND_CATALOG"
HTTP_BACKENDS = {"openai", "ollama"}
LOCAL_BACKENDS = {"transformers", "onnx", "llamacpp", "openvino"}

# Fields that only make sense for some backends; any other backend refuses them.
BACKEND_FIELDS: dict[str, set[str]] = {
    "base_url": HTTP_BACKENDS,
    "base_url_env": HTTP_BACKENDS,
    "model_env": {"openai"},
    "api_key_env": HTTP_BACKENDS,
    "connect_timeout_s": HTTP_BACKENDS,
    "max_image_bytes": HTTP_BACKENDS,
    "keep_alive": {"ollama"},
    "source": LOCAL_BACKENDS,
    "gguf_file": {"transformers", "llamacpp", "openvino"},
    "hub_subfolder": {"onnx"},
    "trust_remote_code": {"transformers"},
    "dtype": {"transformers"},
    "download_gb": LOCAL_BACKENDS,
}
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class CatalogError(ValueError):
    """A catalog that cannot be used, with a message naming the file, target and field."""


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$", max_length=80)
    label: str = Field(min_length=1, max_length=120)
    backend: str
    model: str = Field(min_length=1)
    base_url: str | None = None
    base_url_env: str | None = None
    model_env: str | None = None  # the model's name from this variable (or a visitor's form), else `model`
    api_key_env: str | None = None
    vision: bool = False
    context_length: int | None = Field(None, ge=16)
    notes: str | None = None
    timeout_s: float = Field(180.0, gt=0, le=3600)
    connect_timeout_s: float | None = Field(None, gt=0, le=120)
    max_image_bytes: int | None = Field(None, ge=1024)  # per image, in characters of base64 (NIM: 180000)
    max_image_side: int | None = Field(None, ge=64, le=8192)  # pixels; the prepared copy is at most 1536
    max_images: int | None = Field(None, ge=1, le=32)  # per request; vision targets default to 4
    keep_alive: str | None = None
    source: Literal["bundled", "hub", "path"] | None = None
    gguf_file: str | None = None
    hub_subfolder: str | None = None
    trust_remote_code: bool | None = None
    dtype: str | None = None
    download_gb: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check_backend_fields(self) -> Target:
        if self.backend not in REGISTRY:
            raise ValueError(
                f"backend: unknown backend {self.backend!r}; known: {', '.join(sorted(REGISTRY))}"
            )
        for name, allowed in BACKEND_FIELDS.items():
            if getattr(self, name) is not None and self.backend not in allowed:
                raise ValueError(f"{name}: not used by backend {self.backend!r}")
        for name in ("api_key_env", "base_url_env", "model_env"):
            value = getattr(self, name)
            if value is not None and not ENV_NAME.match(value):
                raise ValueError(
                    f"{name}: must be the NAME of an environment variable (like GITHUB_TOKEN), "
                    "never the key itself"
                )
        for name in ("max_image_bytes", "max_image_side", "max_images"):
            if getattr(self, name) is not None and not self.vision:
                raise ValueError(f"{name}: only used by vision targets (vision: true)")
        if self.api_key_env:
            secrets.watch(self.api_key_env)  # its value is redacted wherever text reaches a user
        if self.backend == "openai" and not (self.base_url or self.base_url_env):
            raise ValueError("base_url: required for backend 'openai' (or give base_url_env)")
        if self.base_url and not re.match(r"^https?://", self.base_url):
            raise ValueError(f"base_url: must start with http:// or https:// (got {self.base_url!r})")
        return self


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
