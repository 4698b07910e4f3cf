"""Local models share a memory budget: the least recently used idle one is unloaded first, one in
use never is, and a model that cannot fit is refused with the numbers, never loaded."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from playground.backends import local
from playground.errors import BackendError
from playground.events import ErrorKind


class FakeModel:
    def __init__(self, name: str):
        self.name, self.closed = name, False

    def close(self) -> None:
        self.closed = True


@pytest.fixture(autouse=True)
def budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAYGROUND_LOCAL_MEMORY_GB", "1.0")
    for key in [k for k in local.loaded_models() if k.startswith("budget-")]:
        local._models.pop(key, None)
        local._sizes.pop(key, None)


async def load(name: str, size: float, made: list[str]) -> Any:
    def loader() -> FakeModel:
        made.append(name)
        return FakeModel(name)

    return await local.load_shared(f"budget-{name}", loader, lambda: size, f"model {name}")


async def test_the_least_recently_used_idle_model_makes_room() -> None:
    made: list[str] = []
    a = await load("a", 0.4, made)
    b = await load("b", 0.4, made)
    await load("a", 0.4, made)  # a used again: b is now the least recent
    c = await load("c", 0.4, made)
    assert made == ["a", "b", "c"]
    assert b.closed and not a.closed and not c.closed
    assert set(k for k in local.loaded_models() if k.startswith("budget-")) == {"budget-a", "budget-c"}


async def test_a_model_over_the_budget_is_refused_with_the_numbers_and_never_loaded() -> None:
    made: list[str] = []
    with pytest.raises(BackendError) as refused:
        await load("huge", 7.6, made)
    assert refused.value.kind is ErrorKind.UNAVAILABLE
    assert refused.value.message == ("model huge needs about 7.6 GB of memory; local models may hold 1.0 GB "
                                     "(PLAYGROUND_LOCAL_MEMORY_GB): not loaded")
    assert made == [] and "budget-huge" not in local.loaded_models()


async def test_a_model_in_use_is_never_unloaded() -> None:
    made: list[str] = []
    busy = await load("busy", 0.7, made)
    assert local.acquire_slot("budget-busy", threading.Event(), lambda e: None)
    try:
        with pytest.raises(BackendError, match=r"0\.7 GB of it is in use by models generating now: not loaded"):
            await load("next", 0.5, made)
        assert not busy.closed and made == ["busy"]
    finally:
        local.release_slot("budget-busy")
    await load("next", 0.5, made)  # idle now: it makes room
    assert busy.closed and made == ["busy", "next"]
