"""Fan-out benchmark: the playground's Run against a bare openai AsyncOpenAI loop, side by side.

For N = 1, 2, 4, 8 concurrent targets on a scripted loopback server with a known TTFT and token
rate, both sides stream the same answers in the same process and the same event loop, taking
turns, and the script prints one Markdown table:

- wall ÷ ideal: the whole run's wall time over the slowest single target's scripted time
  (TTFT + (tokens - 1) / rate); 1.00 is perfect concurrency with no overhead (aim ≤ 1.05);
- TTFT error p50 / p95: measured TTFT minus the scripted TTFT, in ms (aim ≤ 10 ms at N = 8);
- decode error: |measured decode tok/s - scripted rate| / scripted rate, mean over targets (aim ≤ 2 %).

Two baselines share one ``AsyncOpenAI`` client each and stamp ``time.perf_counter()`` right
before ``create()`` and on each content chunk, the least a client can do. "bare SDK" is just
that: when N outgrows the pool's idle connections (httpx drops them after 5 s idle), its TTFT
includes opening a connection. "warmed SDK" first sends ``GET /models`` per stream, as the
playground does, so "ours / warmed" isolates the runner's own cost.

Server placement. A scripted server in a thread shares the client's GIL: whenever the client
parses a chunk, the server's next send can wait, and that lateness would be charged to the
client under test. In its own process (the default) the server keeps its own schedule. The
server measures its own lateness against the script and the table's header prints it
(``server late``). Checked on this 2-core machine, both placements, 3 repeats each, twice: the
server ran late by p50 1.1-1.2 / p95 3-7 ms in a process and p50 1.0-1.1 / p95 2-5 ms in a
thread, and the client-side figures moved less between placements than between two runs of
the same placement (other work on the machine, shown as its load average, dominates). So at
8 × 50 tok/s the GIL does not visibly distort the server; the process placement stays the
default because it rules that out whatever the client does. ``--server thread`` repeats the check.

    .venv/bin/python bench/fanout.py [--server process|thread] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import httpx  # noqa: E402
from openai import AsyncOpenAI  # noqa: E402
from sse_server import Received, Script, ScriptedServer, ServerProcess  # noqa: E402

from playground import metrics  # noqa: E402
from playground.catalog import Target  # noqa: E402
from playground.request import ChatRequest, Message, make_params  # noqa: E402
from playground.runner import Job, Run  # noqa: E402

MODEL = "bench"
PROMPT = "Count to one hundred."


@dataclass
class Sample:
    """What one side measured for one N, one repeat."""

    wall_s: float
    ttft_s: list[float]
    rate: list[float]


SIDES = ("ours", "bare", "warm")  # the playground, the bare SDK loop, the SDK loop warming its connections


@dataclass
class Tally:
    samples: dict[str, list[Sample]] = field(default_factory=lambda: {side: [] for side in SIDES})


async def run_ours(base_url: str, n: int, tokens: int) -> Sample:
    request = ChatRequest((Message("user", PROMPT),), make_params(max_tokens=tokens, temperature=0.0))
    jobs = [Job(Target(id=f"bench/{i}", label=f"bench {i}", backend="openai", model=MODEL, base_url=base_url,
                       timeout_s=60), request) for i in range(n)]
    start = time.perf_counter()
    columns = []
    async for columns in Run(jobs).frames():
        pass
    wall = time.perf_counter() - start
    ttft, rate = [], []
    for column in columns:
        if column.status != "done":
            raise RuntimeError(f"{column.target.id}: {column.status} {column.error}")
        m = column.metrics()
        assert m.ttft_s is not None and m.decode_tokens_per_s is not None
        ttft.append(m.ttft_s)
        rate.append(m.decode_tokens_per_s)
    return Sample(wall, ttft, rate)


async def one_stream(client: AsyncOpenAI, tokens: int, warm: bool) -> tuple[float, float]:
    if warm:  # what the playground does: open (or reuse) a connection before the clock starts
        await client.get("/models", cast_to=httpx.Response)
    sent = time.perf_counter()
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True,
        stream_options={"include_usage": True}, max_tokens=tokens, temperature=0.0)
    first = last = 0.0
    count = 0
    async with stream:
        async for chunk in stream:
            if any(c.delta and c.delta.content for c in chunk.choices):
                last = time.perf_counter()
                first = first or last
            if chunk.usage is not None:
                count = chunk.usage.completion_tokens
    return first - sent, (count - 1) / (last - first)


async def run_base(client: AsyncOpenAI, n: int, tokens: int, warm: bool = False) -> Sample:
    start = time.perf_counter()
    results = await asyncio.gather(*(one_stream(client, tokens, warm) for _ in range(n)))
    wall = time.perf_counter() - start
    return Sample(wall, [r[0] for r in results], [r[1] for r in results])


async def measure(base_url: str, ns: list[int], repeats: int, tokens: int) -> dict[int, Tally]:
    clients = {side: AsyncOpenAI(base_url=base_url, api_key="not-needed", max_retries=0) for side in SIDES[1:]}
    try:
        await run_ours(base_url, 1, 2)  # warm up: imports, pydantic models, a first connection
        for side, client in clients.items():
            await run_base(client, 1, 2)
        tallies = {n: Tally() for n in ns}
        for repeat in range(repeats):
            for n in ns:
                for side in SIDES[repeat % 3:] + SIDES[:repeat % 3]:  # take turns going first
                    sample = (await run_ours(base_url, n, tokens) if side == "ours" else
                              await run_base(clients[side], n, tokens, warm=side == "warm"))
                    tallies[n].samples[side].append(sample)
        return tallies
    finally:
        for client in clients.values():
            await client.close()


def summary(samples: list[Sample], ideal_s: float, ttft_s: float, rate: float) -> dict[str, float]:
    errors_ms = [(t - ttft_s) * 1000 for s in samples for t in s.ttft_s]
    return {
        "wall ÷ ideal": statistics.median(s.wall_s for s in samples) / ideal_s,
        "TTFT error p50 (ms)": metrics.percentile(errors_ms, 50) or 0.0,
        "TTFT error p95 (ms)": metrics.percentile(errors_ms, 95) or 0.0,
        "decode error (%)": statistics.mean(abs(r - rate) / rate * 100 for s in samples for r in s.rate),
    }


AIMS = {"wall ÷ ideal": "≤ 1.05", "TTFT error p50 (ms)": "≤ 10", "TTFT error p95 (ms)": "≤ 10 at N=8",
        "decode error (%)": "≤ 2"}


def table(tallies: dict[int, Tally], script: Script) -> str:
    ideal = script.ttft_s + (script.tokens - 1) * script.interval_s
    rate = 1 / script.interval_s
    lines = ["| N | metric | ours | bare SDK | warmed SDK | ours / bare | ours / warmed | aim |",
             "|---|---|---|---|---|---|---|---|"]
    for n, tally in tallies.items():
        got = {side: summary(tally.samples[side], ideal, script.ttft_s, rate) for side in SIDES}
        for name, value in got["ours"].items():
            digits = 3 if name == "wall ÷ ideal" else 1 if "ms" in name else 2
            cells = [f"{got[side][name]:.{digits}f}" for side in SIDES]
            cells += [f"{value / got[side][name]:.2f}" if abs(got[side][name]) > 1e-9 else "n/a"
                      for side in SIDES[1:]]
            lines.append(f"| {n} | {name} | {' | '.join(cells)} | {AIMS[name]} |")
    return "\n".join(lines)


def server_lateness_ms(received: list[Received], script: Script) -> tuple[float, float]:
    """How late the server itself sent first tokens (p50, p95 ms) against its own schedule."""
    late = [(r.first_token_at - r.at - script.ttft_s) * 1000 for r in received
            if r.first_token_at is not None and r.body and r.body.get("max_tokens", 0) > 2]
    return metrics.percentile(late, 50) or 0.0, metrics.percentile(late, 95) or 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["process", "thread"], default="process")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ns", default="1,2,4,8")
    parser.add_argument("--ttft-ms", type=float, default=200)
    parser.add_argument("--rate", type=float, default=50, help="scripted tokens per second")
    parser.add_argument("--tokens", type=int, default=100)
    args = parser.parse_args()
    script = Script(tokens=args.tokens, ttft_s=args.ttft_ms / 1000, interval_s=1 / args.rate)
    ns = [int(n) for n in args.ns.split(",")]
    started, load = time.perf_counter(), os.getloadavg()  # other work on the machine skews every figure
    server = ServerProcess({MODEL: script}) if args.server == "process" else ScriptedServer({MODEL: script})
    with server:
        tallies = asyncio.run(measure(server.base_url, ns, args.repeats, args.tokens))
    late50, late95 = server_lateness_ms(server.received, script)
    print(f"scripted: TTFT {args.ttft_ms:g} ms, {args.tokens} tokens at {args.rate:g} tok/s; "
          f"server in a {args.server}; {args.repeats} repeats; "
          f"server late p50 {late50:.1f} ms, p95 {late95:.1f} ms; took {time.perf_counter() - started:.0f} s; "
          f"load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after, {os.cpu_count()} CPUs\n")
    print(table(tallies, script))


if __name__ == "__main__":
    main()
