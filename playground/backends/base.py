"""The Backend protocol. Errors and availability live in ``playground.errors``."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, AsyncIterator, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from playground import secrets
from playground.errors import Availability
from playground.events import Event

if TYPE_CHECKING:
    from playground.catalog import Target
    from playground.request import ChatRequest


ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class BackendOptions(BaseModel):
    """A backend's own fields of a catalog entry (the ``Target`` keeps those every backend shares).
    Each backend subclasses it as its ``Options``; a field another backend uses is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpOptions(BackendOptions):
    """What a backend that talks to a server needs to find it."""

    base_url: str | None = None
    connect_timeout_s: float | None = Field(None, gt=0, le=120)
    max_image_bytes: int | None = Field(None, ge=1024)  # per image, in characters of base64 (NIM: 180000)

    @model_validator(mode="after")
    def _check_url(self) -> HttpOptions:
        if self.base_url and not re.match(r"^https?://", self.base_url):
            raise ValueError(f"base_url: must start with http:// or https:// (got {self.base_url!r})")
        return self


class KeyedHttpOptions(HttpOptions):
    """A server found through variables and signed in to with a key, each named by its variable."""

    base_url_env: str | None = None
    api_key_env: str | None = None

    @model_validator(mode="after")
    def _check(self) -> KeyedHttpOptions:
        for name in ("api_key_env", "base_url_env", "model_env"):
            value = getattr(self, name, None)
            if value is not None and not ENV_NAME.match(value):
                raise ValueError(f"{name}: must be the NAME of an environment variable (like GITHUB_TOKEN), "
                                 "never the key itself")
        if self.api_key_env:
            secrets.watch(self.api_key_env)  # its value is redacted wherever text reaches a user
        return self


class TargetBackend:
    """What every backend class shares: the target it serves, and its catalog fields' model."""

    name: ClassVar[str]
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    supports_vision: ClassVar[bool] = False

    def __init__(self, target: Target):
        self.target = target


class HttpBackend(TargetBackend):
    """A backend that talks to a server; servers take images where their models do."""

    Options = HttpOptions
    supports_vision: ClassVar[bool] = True


class Backend(Protocol):
    name: ClassVar[str]
    Options: ClassVar[type[BackendOptions]]
    #: whether this backend can take images at all (the target says whether its model can)
    supports_vision: ClassVar[bool]
    # optional, read with getattr: True where tokens are stamped in another process, so that
    # this process's loop lag cannot bend them (the runner then flags no timing uncertainty)
    # stamps_in_own_process: ClassVar[bool]

    def __init__(self, target: Target) -> None: ...

    def availability(self) -> Availability:
        """Cheap and offline: never makes a network call or imports a heavy library."""
        ...

    def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Yield Progress..., RequestSent, TextDelta..., Usage?, Finished. Raise BackendError."""
        ...
