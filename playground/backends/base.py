"""The Backend protocol. Errors and availability live in ``playground.errors``."""

from __future__ import annotations

from typing import TYPE_CHECKING, AsyncIterator, ClassVar, Protocol

from playground.errors import Availability
from playground.events import Event

if TYPE_CHECKING:
    from playground.catalog import Target
    from playground.request import ChatRequest


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
