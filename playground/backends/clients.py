"""One HTTP client per event loop and endpoint, shared by every request on that loop (the Ollama
backend; an OpenAI-compatible stream has a session of its own, see ``openai_compat``).

A client holds the connection pool: a warm connection is why a run's TTFT does not include a TCP
(and TLS) handshake. Clients are bound to the loop that first used them, so the cache is per
loop. Building one loads the CA store (0.1-0.2 s), so it is built in a thread, never on a loop
that stamps tokens, where it can be. ``aclose_here()`` closes the running loop's clients; the
measurement loop calls it as it winds down, so no connection is left for the garbage collector
to complain about.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Awaitable, Callable, Generic, Hashable, TypeVar

C = TypeVar("C")


class LoopClients(Generic[C]):
    def __init__(self, close: Callable[[C], Awaitable[Any]], build_in_thread: bool = True):
        """``build_in_thread=False`` for a client that must be made on its loop and is cheap to
        make (aiohttp's session: its SSL contexts are built when aiohttp is imported)."""
        self._close, self._in_thread = close, build_in_thread
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, C]] = (
            weakref.WeakKeyDictionary())
        _caches.append(self)

    async def get(self, key: Hashable, build: Callable[[], C]) -> tuple[C, bool]:
        """The running loop's client for ``key``, and whether it was built just now."""
        per_loop = self._by_loop.setdefault(asyncio.get_running_loop(), {})
        client = per_loop.get(key)
        if client is not None:
            return client, False
        client = await asyncio.to_thread(build) if self._in_thread else build()
        kept = per_loop.setdefault(key, client)
        if kept is not client:  # another request on this loop built one meanwhile
            await self._close(client)
        return kept, kept is client

    async def aclose_here(self) -> None:
        for client in self._by_loop.pop(asyncio.get_running_loop(), {}).values():
            try:
                await self._close(client)
            except Exception:  # noqa: BLE001 - closing is best effort; the loop is going away
                pass


_caches: list[LoopClients[Any]] = []


async def aclose_here() -> None:
    """Close every client the running loop holds."""
    for cache in list(_caches):
        await cache.aclose_here()
