"""``python -m playground.with_parent PID MODULE ARGS...``: run MODULE as ``python -m`` would, ending it
when process PID (the one that started it) ends.

A build child outlives an app killed mid-build (``kill -9``, a crash, a container stop): re-parented,
it ran on for a minute at a full core, and wrote into a cache folder nothing removed afterwards."""

from __future__ import annotations

import os
import runpy
import sys
import threading
import time

POLL_S = 0.5


def _watch(parent: int) -> None:
    while True:
        time.sleep(POLL_S)
        if os.getppid() != parent:  # re-parented: the app is gone
            os._exit(1)


def command(module: str, *args: str) -> list[str]:
    """The command that runs ``python -m module args`` as this process's child, ended with it. The
    parent's pid goes with it: read in the child, it might already be a re-parented one."""
    return [sys.executable, "-m", "playground.with_parent", str(os.getpid()), module, *args]


def main() -> None:
    if len(sys.argv) < 3 or not sys.argv[1].isdigit():
        sys.exit("usage: python -m playground.with_parent PARENT_PID MODULE [ARGS...]")
    parent = int(sys.argv[1])
    if os.getppid() != parent:  # gone while this process started
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="with-parent", daemon=True).start()
    sys.argv = sys.argv[2:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
