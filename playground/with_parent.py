"""``python -m playground.with_parent MODULE ARGS...``: run MODULE as ``python -m`` would, ending it when
the process that started it ends.

A build child outlives an app killed mid-build (``kill -9``, a crash, a container stop): re-parented,
it ran on for a minute at a full core, and wrote into a cache folder nothing removed afterwards."""

from __future__ import annotations

import os
import runpy
import sys
import threading
import time

POLL_S = 0.5
PARENT_ENV = "PLAYGROUND_PARENT_PID"  # who started it: read before this process could see a re-parenting


def _watch(parent: int) -> None:
    while True:
        time.sleep(POLL_S)
        if os.getppid() != parent:  # re-parented: the app is gone
            os._exit(1)


def env_for_child(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a ``with_parent`` child of this process."""
    return {**env, PARENT_ENV: str(os.getpid())}


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m playground.with_parent MODULE [ARGS...]")
    given = os.environ.pop(PARENT_ENV, "")
    parent = int(given) if given.isdigit() else os.getppid()
    if os.getppid() != parent:  # gone while this process started
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="with-parent", daemon=True).start()
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
