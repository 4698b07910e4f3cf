"""Shared fixtures: the bundled model, the built-in catalog, loopback ports, subprocess environments."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from playground import models
from playground.catalog import BUILTIN_CATALOG, Catalog, read_catalog_file

REPO_ROOT = Path(__file__).resolve().parent.parent

#: environment variables that must never reach a subprocess a test starts: keys, endpoints, user catalogs
SECRET_ENV_PREFIXES = (
    "GITHUB_TOKEN", "NVIDIA_API_KEY", "AZURE_", "OPENAI_", "HF_TOKEN", "PLAYGROUND_CATALOG",
)


# every run a test makes is recorded: into a database of the test session's own, never the user's
os.environ.setdefault("PLAYGROUND_DB", os.path.join(tempfile.mkdtemp(prefix="playground-test-runs-"), "runs.sqlite"))
# nothing a test starts reaches beyond loopback: no Gradio version check, no hub telemetry (subprocesses inherit these)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def bundled_gguf() -> Path:
    """The bundled SmolLM2 GGUF; tests that need the real model skip without it."""
    path = models.bundled_gguf()
    if path is None:
        pytest.skip(models.INSTALL_HINT)
    return path


@pytest.fixture(scope="session")
def builtin_catalog() -> Catalog:
    """The built-in targets only, whatever PLAYGROUND_CATALOG says."""
    return read_catalog_file(BUILTIN_CATALOG)


def free_loopback_port() -> int:
    """A port nothing listens on right now (bound once by the OS, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    return free_loopback_port()


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any key, endpoint or user catalog, able to import playground."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SECRET_ENV_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["HF_HUB_OFFLINE"] = "1"  # nothing a test starts reaches beyond loopback
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def clean_env() -> Callable[..., dict[str, str]]:
    """``clean_env(NAME=value, ...)``: a fresh environment for a subprocess, with these added."""
    return _clean_env


@pytest.fixture(scope="session", autouse=True)
def measurement_loop_stops_with_the_session():
    """pytest collects garbage at the end of a session, holding the GIL long enough for the
    measurement loop's monitor to report a stall that no run saw: stop the loop first."""
    yield
    from playground import clock

    clock.shutdown()


@pytest.fixture
async def close_clients():
    """Close the HTTP clients a test's own event loop made (aiohttp warns about ones left open)."""
    yield
    from playground.backends import clients

    await clients.aclose_here()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium through Playwright (tests/browser_flow.py), one per test module."""
    import browser_flow as flow

    with flow.chromium() as chromium:
        yield chromium


@pytest.fixture
def page_at(browser: Any) -> Iterator[Any]:
    """A factory of pages at a viewport (desktop by default); every context it opened is closed,
    and none reached off loopback."""
    import browser_flow as flow

    with flow.page_factory(browser) as make:
        yield make
