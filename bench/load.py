"""Load benchmark: a workshop's sessions through the real Gradio queue, with Stops and a broken target.

``--sessions`` (30) ``gradio_client`` sessions at once, each doing ``--runs`` (10) runs of 4 scripted
OpenAI-compatible targets (TTFT 0.2 s, 50 tok/s, 50 tokens), one of the four cutting its stream
after 5 tokens; about one run in five is stopped by its session after a random 0.3-1 s. The same
runs by one session alone come first: the baseline. It prints, side by side:

- errors other than the scripted ones (a cut stream on the broken target, a stopped column): goal 0;
- the TTFT the app reports, alone and under load, and what the load added at p50 / p95 (goal
  <= 50 ms at p95); the app's figures come from each run's JSON download;
- the app's resources (its process and its children: RSS, threads, open files) before the load
  and after it, once the runs have ended: goal flat;
- the wall time of a run, alone and under load.

    .venv/bin/python bench/load.py [--sessions 30] [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanout import (LOADERS, RUN_TIMEOUT_S, final_streams, label_of, load_pages, playground_app,  # noqa: E402
                    run_args, yield_cpu)
from sse_server import Script, ServerProcess  # noqa: E402

TOKENS = 50
MODELS = ["load-a", "load-b", "load-c", "load-cut"]
BROKEN = "load-cut"
STOP_SHARE = 0.2


@dataclass
class Tally:
    runs: int = 0
    ttft_s: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    cut: int = 0
    stopped: int = 0
    stop_calls_failed: int = 0

    def add(self, other: Tally) -> None:
        self.runs += other.runs
        self.ttft_s += other.ttft_s
        self.walls += other.walls
        self.unexpected += other.unexpected
        self.cut += other.cut
        self.stopped += other.stopped
        self.stop_calls_failed += other.stop_calls_failed


def scripts() -> dict[str, Script]:
    normal = Script(tokens=TOKENS, ttft_s=0.2, interval_s=0.02)
    return {**{m: normal for m in MODELS if m != BROKEN},
            BROKEN: Script(tokens=TOKENS, ttft_s=0.2, interval_s=0.02, fault="drop", fault_after=5)}


def resources(pid: int) -> dict[str, float]:
    """RSS (MB), threads and open files of ``pid`` and its children."""
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    rss = threads = files = sockets = 0.0
    for p in pids:
        try:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{p}/status").read_text().splitlines())
            rss += int(status["VmRSS"].split()[0]) / 1024
            threads += int(status["Threads"])
            for fd in os.listdir(f"/proc/{p}/fd"):
                files += 1
                try:
                    sockets += os.readlink(f"/proc/{p}/fd/{fd}").startswith("socket:")
                except OSError:
                    pass
        except (OSError, KeyError, ValueError):
            continue
    return {"RSS (MB)": rss, "threads": threads, "open files": files, "of which sockets": sockets,
            "processes": len(pids)}


def stop(client: Any, tally: Tally) -> None:
    try:
        client.predict(api_name="/stop")
    except Exception:  # noqa: BLE001 - gradio_client cancels a call whose run just ended: not the app's error
        tally.stop_calls_failed += 1


def session(url: str, index: int, runs: int, stops: bool, seed: int, barrier: threading.Barrier | None) -> Tally:
    from gradio_client import Client

    yield_cpu()
    rng = random.Random(seed)
    tally = Tally()
    client = Client(url, verbose=False)
    ids = [f"bench-{m}" for m in MODELS]
    labels = {label_of(m): m for m in MODELS}
    if barrier is not None:
        barrier.wait(timeout=300)
    try:
        for r in range(runs):
            prompt = f"Count to fifty. (session {index} run {r})"
            started = time.perf_counter()
            job = client.submit(*run_args(prompt, ids, TOKENS), api_name="/run")
            timer = None
            if stops and rng.random() < STOP_SHARE:
                timer = threading.Timer(rng.uniform(0.3, 1.0), stop, args=(client, tally))
                timer.start()
            tally.runs += 1
            try:
                job.result(timeout=RUN_TIMEOUT_S)
                streams, _ = final_streams(job.outputs()[-1], prompt, labels)
            except Exception as exc:  # noqa: BLE001 - counted, the others go on
                tally.unexpected.append(f"run failed: {exc!r}"[:200])
                continue
            finally:
                if timer is not None:
                    timer.join()
            tally.walls.append(time.perf_counter() - started)
            for stream in streams:
                error = stream.error or ""
                if error.startswith("stopped"):
                    tally.stopped += 1
                elif stream.key[0] == BROKEN and "stream cut" in error:
                    tally.cut += 1
                elif error:
                    tally.unexpected.append(f"{stream.key[0]}: {error}"[:200])
                elif stream.ttft_s is not None:
                    tally.ttft_s.append(stream.ttft_s)
    finally:
        client.close()  # its heartbeat connection would stay open on the app
    return tally


def pct(values: list[float], q: float) -> float | None:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else None


def fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


def app_pid(port_url: str) -> int:
    """The pid of the app serving ``port_url`` (the process listening on its port)."""
    port = int(port_url.rstrip("/").rsplit(":", 1)[1])
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                    inodes.add(fields[9])
        except OSError:
            continue
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(pid)
        except OSError:
            continue
    raise RuntimeError(f"no process listens on port {port}")


def load_round(url: str, sessions: int, runs: int, seed: int, counts: list[int]) -> Tally:
    barrier = threading.Barrier(sessions)
    loaded = Tally()
    stop_loading = threading.Event()
    with ThreadPoolExecutor(sessions + LOADERS) as pool:
        futures = [pool.submit(session, url, s, runs, True, seed + s, barrier) for s in range(sessions)]
        loaders = [pool.submit(load_pages, url, stop_loading, time.monotonic() + 900, counts) for _ in range(LOADERS)]
        try:
            for future in futures:
                loaded.add(future.result(timeout=RUN_TIMEOUT_S * (runs + 1)))
        finally:
            stop_loading.set()
            for loader in loaders:
                loader.result(timeout=60)
    return loaded


def settled(pid: int, than: dict[str, float]) -> dict[str, float]:
    """The app's resources once what the runs left behind has had a moment to go (bounded)."""
    deadline, now = time.monotonic() + 10, resources(pid)
    while time.monotonic() < deadline and now["threads"] > than["threads"]:
        time.sleep(0.5)
        now = resources(pid)
    return now


def run_load(sessions: int, runs: int, rounds: int = 2, seed: int = 7, cap: int | None = None) -> dict[str, Any]:
    """One session alone, then ``rounds`` of the load; resources before and after each round: the
    first round may grow pools to their working size, a leak grows again in the next."""
    with ServerProcess(scripts()) as server, tempfile.TemporaryDirectory(prefix="pp-load-") as tmp, \
            playground_app(server.base_url, MODELS, 4, Path(tmp),
                           **({"PLAYGROUND_SESSIONS": str(cap)} if cap else {})) as url:
        pid = app_pid(url)
        alone = session(url, -1, runs, stops=False, seed=seed, barrier=None)  # also warms the app
        snapshots = [resources(pid)]
        loaded, counts = Tally(), [0, 0]
        started = time.perf_counter()
        for r in range(rounds):
            loaded.add(load_round(url, sessions, runs, seed + 1000 * (r + 1), counts))
            snapshots.append(settled(pid, snapshots[-1]))
        took = time.perf_counter() - started
    return {"alone": alone, "loaded": loaded, "snapshots": snapshots, "took": took,
            "pages": counts, "sessions": sessions, "runs": runs, "rounds": rounds}


def report(result: dict[str, Any]) -> str:
    alone, loaded = result["alone"], result["loaded"]
    lines = [f"{result['rounds']} rounds of {result['sessions']} sessions × {result['runs']} runs × 4 targets (one cuts its stream), "
             f"~{int(STOP_SHARE * 100)} % of runs stopped; {result['pages'][0]} page loads "
             f"({result['pages'][1]} failed) meanwhile; took {result['took']:.0f} s; {os.cpu_count()} CPUs", "",
             "| metric | one session alone | under load | added | goal |", "|---|---|---|---|---|"]
    for q in (50, 95):
        a, b = pct(alone.ttft_s, q), pct(loaded.ttft_s, q)
        added = None if a is None or b is None else b - a
        lines.append(f"| TTFT p{q} (ms) | {fmt(a, 1000)} | {fmt(b, 1000)} | {fmt(added, 1000)} | "
                     f"{'≤ 50 added' if q == 95 else ''} |")
    lines.append(f"| run wall p50 (s) | {fmt(pct(alone.walls, 50), 1, 2)} | {fmt(pct(loaded.walls, 50), 1, 2)} | | |")
    lines.append(f"| runs | {alone.runs} | {loaded.runs} | | |")
    lines.append(f"| columns cut as scripted / stopped | {alone.cut} / {alone.stopped} | {loaded.cut} / {loaded.stopped} | | |")
    lines.append(f"| errors not scripted | {len(alone.unexpected)} | {len(loaded.unexpected)} | | 0 |")
    lines.append(f"| Stop calls gradio_client gave up on (the run had just ended) | {alone.stop_calls_failed} | "
                 f"{loaded.stop_calls_failed} | | |")
    snapshots = result["snapshots"]
    heads = ["before the load"] + [f"after round {i + 1}" for i in range(len(snapshots) - 1)]
    lines += ["", f"| app (and its children) | {' | '.join(heads)} | change in the last round | goal |",
              "|---" * (len(heads) + 3) + "|"]
    for key in snapshots[0]:
        values = [s[key] for s in snapshots]
        lines.append(f"| {key} | {' | '.join(f'{v:.0f}' for v in values)} | {values[-1] - values[-2]:+.0f} | flat |")
    for error in (alone.unexpected + loaded.unexpected)[:10]:
        lines.append(f"\nunexpected: {error}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--session-cap", type=int, default=None,
                        help="the app's PLAYGROUND_SESSIONS (default: the app's own, 500)")
    args = parser.parse_args()
    print(report(run_load(args.sessions, args.runs, args.rounds, cap=args.session_cap)))


if __name__ == "__main__":
    main()
