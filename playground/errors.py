"""The ground floor every module may import: error kinds, the one exception a backend raises, and
whether a target can run. It imports nothing of the playground."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal


class ErrorKind(str, Enum):
    AUTH = "auth"
    RATE_LIMITED = "rate_limited"
    NOT_FOUND = "not_found"
    BAD_REQUEST = "bad_request"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    SERVER = "server"
    TRUNCATED = "truncated"
    CANCELLED = "cancelled"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class BackendError(Exception):
    """A failure mapped onto one of a few kinds, with a message fit to show the user, and the HTTP
    status where there was one. It pickles as itself, so it crosses from a model process unchanged."""

    def __init__(self, kind: ErrorKind, message: str, retry_after: float | None = None,
                 status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.kind, self.message, self.retry_after, self.status)

    @classmethod
    def wrap(cls, exc: BaseException) -> BackendError:
        """``exc`` as a BackendError: itself if it is one, else an internal error naming its type."""
        return exc if isinstance(exc, BackendError) else cls(ErrorKind.INTERNAL, f"{type(exc).__name__}: {exc}")


Readiness = Literal["ready", "first_run", "unavailable"]


@dataclass(frozen=True)
class Availability:
    """Whether a target can run now. ``reason`` is one line for the user."""

    state: Readiness
    reason: str = ""

    @property
    def runnable(self) -> bool:
        return self.state != "unavailable"


READY = Availability("ready", "ready")


def first_run(download_gb: float | None) -> Availability:
    """A target whose model is not downloaded yet: the first run downloads it."""
    size = f"{download_gb:g} GB" if download_gb else "the model"
    return Availability("first_run", f"not downloaded yet: first run downloads {size}")
