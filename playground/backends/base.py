"""The Backend protocol, the error kinds, and availability."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, ClassVar, Literal, Protocol

from playground.events import ErrorKind, Event

if TYPE_CHECKING:
    from playground.catalog import Target
    from playground.request import ChatRequest

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


class BackendError(Exception):
    """A failure mapped onto one of a few kinds, with a message fit to show the user."""

    def __init__(self, kind: ErrorKind, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after


class Backend(Protocol):
    name: ClassVar[str]
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
