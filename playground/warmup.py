"""Start-up work that must never land on an event loop during a run: importing the backends and
their SDKs (the openai SDK alone takes 0.3–0.9 s), loading the token-estimate tokenizer and
starting the measurement loop. It runs in a thread, so the first page is not delayed."""

from __future__ import annotations

import importlib
import logging
import threading

from playground import tokens
from playground.backends import REGISTRY
from playground.clock import measure_loop

log = logging.getLogger(__name__)
SDKS = ("ollama",)  # imported lazily inside their backend; import them now too


def _warm() -> None:
    measure_loop()
    for path in REGISTRY.values():
        try:
            importlib.import_module(path.partition(":")[0])
        except Exception as exc:  # noqa: BLE001 - the run will say what is wrong in its column
            log.debug("warm-up could not import %s: %s", path, exc)
    for name in SDKS:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - optional
            pass
    tokens.preload(wait=True)


def start() -> threading.Thread:
    thread = threading.Thread(target=_warm, name="playground-warmup", daemon=True)
    thread.start()
    return thread
