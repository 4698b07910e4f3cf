"""Fan-out benchmark: the playground's timing against the scripted server's own timestamps, in three modes.

A scripted OpenAI-compatible server (``tests/sse_server.py``) runs in its own process and stamps,
with ``time.perf_counter()`` (one clock across processes on Linux), when each request arrived and
when it wrote each content chunk. The truth for every stream is the server's: TTFT = first chunk
written - request arrived; decode rate = (chunks - 1) / (last chunk - first chunk). Each figure the
client side reports is matched to its own server request by (model, last user message): every CLI
column gets a model name of its own, every UI run a prompt of its own. Errors:

- TTFT error: reported TTFT - the server's TTFT, in ms (signed: positive is late);
- decode error: |reported decode tok/s - the server's rate| / the server's rate, in %.

Modes (``--modes cli,ui,load``), printed side by side in one table, with the aims of issue 8:

- **cli**: the in-process ``Run`` path (what ``python -m playground run`` uses) for N = 1, 2, 4, 8
  concurrent targets, next to two baselines in the same process and loop, taking turns. Both share
  one ``AsyncOpenAI`` client each and stamp ``perf_counter()`` right before ``create()`` and on each
  content chunk, the least a client can do. "bare SDK" is just that: when N outgrows the pool's idle
  connections (httpx drops them after 5 s idle), its TTFT includes opening a connection. "warmed
  SDK" first sends ``GET /models`` per stream, as the playground does, so "ours / warmed" isolates
  the runner's own cost. A second table gives every N.
- **ui**: ``python -m playground serve`` in its own process with a user catalog of scripted targets,
  the page open in headless Chromium (Playwright): each run is typed into the page and submitted
  with Enter, the page renders it, and the run's JSON download is read. The UI has at most 6
  columns, so this mode runs 6 (``--ui-columns``), not 8. The first run after the page load counts.
- **load**: the same app under ``--sessions`` (30) concurrent ``gradio_client`` sessions of
  ``--load-targets`` (4) targets each, ``--load-runs`` (3) runs per session, while a few threads
  keep loading the page (``/``, ``/config`` and the static assets the page names, compressed).
  The JSON download comes through ``gradio_client``'s result files. A session's later runs carry
  its earlier turns, as a person's would.

Defaults, as issue 8 measured: scripted TTFT 0.2 s at 50 tok/s, 100 tokens in the cli and ui modes
(``--tokens``), 50 under load (``--load-tokens``). All columns share one TTFT, so their first tokens
land together; ``--ttft-spread-ms 600`` spreads them over 0.2-0.8 s, where a block on the app's loop
right after one column's first token shows up in another column's TTFT.

Precision of the app's figures: the JSON download (ttft_s to 0.1 ms, decode to 0.01 tok/s); where
it cannot be read, the results table (1 ms, 0.1 tok/s); the row "app figures from" says which. The
CLI reads its columns unrounded. ``clock_lag_ms`` (the worst lag of the app's measurement loop while a
column streamed) is shown where the app reports it, "not reported" otherwise.

Server placement: in its own process (the default) the server keeps its own schedule whatever the
client's GIL does; ``--server thread`` (cli mode only) repeats the old check. The header prints how
late the server itself ran against its script (``server late``) and each mode's row does too.

    .venv/bin/python bench/fanout.py [--modes cli,ui,load] [--repeats 3] [--sessions 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import httpx  # noqa: E402
from openai import AsyncOpenAI  # noqa: E402
from sse_server import Received, Script, ScriptedServer, ServerProcess  # noqa: E402

from playground import metrics  # noqa: E402
from playground.catalog import Target  # noqa: E402
from playground.report import result_entry  # noqa: E402
from playground.request import ChatRequest, Message, make_params  # noqa: E402
from playground.runner import Job, Run  # noqa: E402
from playground.settings import MAX_COLUMNS  # noqa: E402

PROMPT = "Count to one hundred."
UNCERTAIN_MS = 10.0  # the runner's threshold for "timing uncertain"
SIDES = ("ours", "bare", "warm")  # the playground, the bare SDK loop, the SDK loop warming its connections
MODES = ("cli", "ui", "load")
Key = tuple[str, str]  # (model, last user message): one server request
LOADERS = 3  # threads loading the page during the load mode
RUN_TIMEOUT_S = 180
JSON_SOURCE = "JSON download (0.1 ms, 0.01 tok/s)"  # where the app's figures came from: their precision
TABLE_SOURCE = "results table (1 ms, 0.1 tok/s)"


@dataclass
class Stream:
    """What the client side reported for one column, and which server request it was."""

    key: Key
    ttft_s: float | None
    rate: float | None
    lag_ms: float | None = None
    error: str | None = None
    stamped_in: str | None = None  # the app's own loop, or the measurement process (the JSON's stamped_in)


@dataclass
class Sample:
    """One run: its wall time and its streams."""

    wall_s: float
    streams: list[Stream]


@dataclass
class Scored:
    """Errors against the server's stamps over a set of samples."""

    ttft_ms: list[float] = field(default_factory=list)
    decode_pct: list[float] = field(default_factory=list)
    lag_ms: list[float] = field(default_factory=list)
    late_ms: list[float] = field(default_factory=list)  # the server against its own script
    walls: list[float] = field(default_factory=list)
    streams: int = 0
    errors: int = 0
    error_texts: list[str] = field(default_factory=list)
    beyond_bar: int = 0  # TTFT errors larger than what the column itself claimed (10 ms, or its ± when flagged)
    with_bar: int = 0
    stamped_in: dict[str, list[float]] = field(default_factory=dict)  # where -> TTFT errors (ms)


# --- matching to the server's stamps ---------------------------------------------------------
def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


def server_index(received: list[Received]) -> dict[Key, list[Received]]:
    index: dict[Key, list[Received]] = {}
    for r in received:
        if r.path.endswith("/chat/completions") and isinstance(r.body, dict):
            users = [m for m in r.body.get("messages") or [] if m.get("role") == "user"]
            key = (str(r.body.get("model")), _text(users[-1]["content"]) if users else "")
            index.setdefault(key, []).append(r)
    return index


def score(samples: list[Sample], index: dict[Key, list[Received]], scripts: dict[str, Script]) -> Scored:
    out = Scored(walls=[s.wall_s for s in samples])
    for stream in (s for sample in samples for s in sample.streams):
        out.streams += 1
        found = index.get(stream.key, [])
        if stream.error or len(found) != 1 or stream.ttft_s is None or stream.rate is None:
            out.errors += 1
            out.error_texts.append(stream.error or f"{len(found)} server requests, TTFT {stream.ttft_s}")
            continue
        r = found[0]
        if r.first_token_at is None or len(r.events) < 2:
            out.errors += 1
            continue
        server_ttft = r.first_token_at - r.at
        server_rate = (len(r.events) - 1) / (r.events[-1] - r.events[0])
        out.ttft_ms.append((stream.ttft_s - server_ttft) * 1000)
        out.decode_pct.append(abs(stream.rate - server_rate) / server_rate * 100)
        out.late_ms.append((server_ttft - scripts[stream.key[0]].ttft_s) * 1000)
        if stream.stamped_in:
            out.stamped_in.setdefault(stream.stamped_in, []).append(out.ttft_ms[-1])
        if stream.lag_ms is not None:
            out.lag_ms.append(stream.lag_ms)
            out.with_bar += 1
            claimed = max(UNCERTAIN_MS, stream.lag_ms)  # the app's ± (lag and a tick); under 10 ms no warning
            out.beyond_bar += abs(out.ttft_ms[-1]) > claimed
    return out


def from_results(results: list[dict[str, Any]], prompt: str) -> list[Stream]:
    """Streams from the app's JSON results (``run --json`` / the JSON download)."""
    return [Stream((r["model"], prompt), r.get("ttft_s"), r.get("decode_tokens_per_s"), r.get("clock_lag_ms"),
                   None if r.get("status") == "ok" else "stopped" if r.get("status") == "stopped" else str(r.get("error")),
                   r.get("stamped_in"))
            for r in results]


def from_table(headers: list[str], rows: list[list[Any]], prompt: str,
               models: dict[str, str]) -> list[Stream]:
    """Streams from the results table (rounded: 1 ms, 0.1 tok/s); ``models`` maps label -> model."""
    def number(value: Any) -> float | None:
        try:
            return float(str(value).lstrip("~±"))
        except ValueError:
            return None

    streams = []
    for row in rows:
        cell = dict(zip(headers, row))
        lag = number(cell["clock ±ms"]) if "clock ±ms" in cell else None
        status = str(cell.get("status", ""))
        key = (models.get(str(cell.get("target")), "?"), prompt)
        streams.append(Stream(key, number(cell.get("TTFT (s)")),
                              number(cell.get("decode tok/s")), lag, None if status == "done" else status))
    return streams


# --- mode cli: the in-process Run next to the bare SDK ----------------------------------------
def cli_model(side: str, repeat: int, n: int, i: int) -> str:
    return f"cli-{side}-r{repeat}-n{n}-{i}"


async def run_ours(base_url: str, models: list[str], tokens: int) -> Sample:
    request = ChatRequest((Message("user", PROMPT),), make_params(max_tokens=tokens, temperature=0.0))
    jobs = [Job(Target(id=f"bench/{m}", label=m, backend="openai", model=m, base_url=base_url, timeout_s=60),
                request) for m in models]
    start = time.perf_counter()
    columns = []
    async for columns in Run(jobs).frames():
        pass
    wall = time.perf_counter() - start
    streams = []
    for column in columns:
        entry = result_entry(column)  # unrounded figures below; the entry for clock_lag_ms, when there
        m = column.metrics()
        streams.append(Stream((column.target.model, PROMPT), m.ttft_s, m.decode_tokens_per_s,
                              entry.get("clock_lag_ms"), None if column.status == "done" else
                              f"{column.status} {column.error}", entry["stamped_in"]))
    return Sample(wall, streams)


async def one_stream(client: AsyncOpenAI, model: str, tokens: int, warm: bool) -> Stream:
    if warm:  # what the playground does: open (or reuse) a connection before the clock starts
        await client.get("/models", cast_to=httpx.Response)
    sent = time.perf_counter()
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], stream=True,
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
    rate = (count - 1) / (last - first) if count > 1 and last > first else None
    return Stream((model, PROMPT), first - sent if first else None, rate)


async def run_base(client: AsyncOpenAI, models: list[str], tokens: int, warm: bool = False) -> Sample:
    start = time.perf_counter()
    streams = await asyncio.gather(*(one_stream(client, m, tokens, warm) for m in models))
    return Sample(time.perf_counter() - start, list(streams))


async def measure_cli(base_url: str, ns: list[int], repeats: int,
                      tokens: int) -> dict[int, dict[str, list[Sample]]]:
    clients = {side: AsyncOpenAI(base_url=base_url, api_key="not-needed", max_retries=0)
               for side in SIDES[1:]}
    try:
        await run_ours(base_url, ["cli-ours-warmup"], 2)  # warm up: imports, pydantic models, a connection
        for side, client in clients.items():
            await run_base(client, [f"cli-{side}-warmup"], 2)
        tallies = {n: {side: [] for side in SIDES} for n in ns}
        for repeat in range(repeats):
            for n in ns:
                for side in SIDES[repeat % 3:] + SIDES[:repeat % 3]:  # take turns going first
                    models = [cli_model(side, repeat, n, i) for i in range(n)]
                    sample = (await run_ours(base_url, models, tokens) if side == "ours" else
                              await run_base(clients[side], models, tokens, warm=side == "warm"))
                    tallies[n][side].append(sample)
        return tallies
    finally:
        for client in clients.values():
            await client.close()


# --- the app in its own process ---------------------------------------------------------------
def ui_model(i: int) -> str:
    return f"ui-c{i}"


def load_model(i: int) -> str:
    return f"load-c{i}"


def label_of(model: str) -> str:
    return f"scripted {model}"


@contextmanager
def playground_app(base_url: str, models: list[str], columns: int, folder: Path, **settings: str) -> Iterator[str]:
    """``python -m playground serve`` on a free loopback port, a catalog of ``models`` (and any
    further ``PLAYGROUND_*`` settings); always stopped."""
    import subprocess

    import yaml
    from browser_flow import app_env, free_port, stop_process, wait_http_ok

    catalog = folder / "catalog.yaml"
    targets = [{"id": f"bench-{m}", "label": label_of(m), "backend": "openai", "model": m,
                "base_url": base_url, "timeout_s": 120} for m in models]
    catalog.write_text(yaml.safe_dump({"defaults": [t["id"] for t in targets[:columns]], "targets": targets}))
    port = free_port()
    env = app_env(PLAYGROUND_CATALOG=str(catalog), PLAYGROUND_COLUMNS=str(columns), **settings)
    log = folder / "app.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "playground", "serve", "--port", str(port),
                                 "--host", "127.0.0.1"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http_ok(url, proc, 240, log)
        yield url
    finally:
        stop_process(proc)


# --- mode ui: Chromium attached, runs typed into the page --------------------------------------
HEADERS_JS = """() => Array.from(
  document.querySelectorAll('#results thead th, #results [role="columnheader"]'))
  .map((th) => th.innerText.trim()).filter((t) => t !== '')"""


def measure_ui(url: str, columns: int, repeats: int, folder: Path) -> tuple[list[Sample], str]:
    from browser_flow import (DESKTOP, TABLE_JS, chromium, new_page, submit_prompt, table_rows,
                              wait_statuses)

    models = {label_of(ui_model(i)): ui_model(i) for i in range(columns)}
    samples, sources = [], set()
    with chromium() as browser:
        page = new_page(browser, DESKTOP)
        page.goto(url, wait_until="domcontentloaded")
        for selector in [f"#col-{i}-chat" for i in range(columns)] + ["#prompt textarea", "#run", "#results"]:
            page.wait_for_selector(selector, state="visible", timeout=90_000)
        for repeat in range(repeats):
            prompt = f"{PROMPT} (ui run {repeat})"
            if repeat:
                page.locator("#clear").click()
                page.wait_for_function(f"() => ({TABLE_JS})().length === 0 && !document.querySelector("
                                       "'#col-0-chat [data-testid=\"bot\"]')", timeout=30_000, polling=100)
            start = time.perf_counter()
            submit_prompt(page, prompt)
            wait_statuses(page, columns, ("done", "stopped", "error"), RUN_TIMEOUT_S)
            wall = time.perf_counter() - start
            page.locator("#download-json").wait_for(state="visible", timeout=60_000)
            page.wait_for_function(f"() => ({TABLE_JS})().length >= {columns}", timeout=30_000, polling=100)
            try:
                with page.expect_download(timeout=30_000) as info:
                    page.locator("#download-json").click()
                path = folder / f"ui-run-{repeat}.json"
                info.value.save_as(path)
                streams = from_results(json.loads(path.read_text())["results"], prompt)
                sources.add(JSON_SOURCE)
            except Exception as exc:  # noqa: BLE001 - fall back to the table the page shows
                print(f"ui run {repeat}: JSON download unreadable ({exc!r}); using the table",
                      file=sys.stderr)
                streams = from_table(page.evaluate(HEADERS_JS), table_rows(page), prompt, models)
                sources.add(TABLE_SOURCE)
            samples.append(Sample(wall, streams))
    return samples, " + ".join(sorted(sources))


# --- mode load: many gradio_client sessions while pages load ------------------------------------
def load_pages(url: str, stop: threading.Event, deadline: float, counts: list[int]) -> None:
    """GET the page, its config and its static assets, compressed, until ``stop`` (bounded)."""
    yield_cpu()
    def get(path: str) -> bytes:
        request = urllib.request.Request(url.rstrip("/") + path,
                                         headers={"Accept-Encoding": "gzip, deflate, br"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    assets: list[str] = []
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            html = get("/").decode("utf-8", errors="replace")
            assets = assets or sorted(set(re.findall(r'(?:src|href)="(/[^"]+\.(?:js|css))"', html)))[:12]
            for path in ["/config", *assets]:
                get(path)
            counts[0] += 1
        except OSError:
            counts[1] += 1
            stop.wait(0.2)


def run_args(prompt: str, targets: list[str], max_tokens: int) -> list[Any]:
    padded = targets + [None] * (MAX_COLUMNS - len(targets))
    return [{"text": prompt, "files": []}, "", 0.0, 1.0, max_tokens, "", len(targets), *padded]


def final_streams(final: Any, prompt: str, models: dict[str, str]) -> tuple[list[Stream], str]:
    """The run's last output: the JSON download when gradio_client fetched it, else the table."""
    download = final[2 * MAX_COLUMNS + 2]
    path = download.get("value") if isinstance(download, dict) else download
    if isinstance(path, dict):
        path = path.get("path")
    try:
        return from_results(json.loads(Path(str(path)).read_text())["results"], prompt), JSON_SOURCE
    except (OSError, ValueError, KeyError, TypeError):
        table = final[2 * MAX_COLUMNS]
        return from_table(table["headers"], table["data"], prompt, models), TABLE_SOURCE


def yield_cpu() -> None:
    """This thread of the load generator runs at the lowest priority. In a workshop the 30 sessions are
    browsers on 30 other machines; here they share 2 CPUs with the app and the scripted server, and
    at normal priority they starved both (the server's own stamps ran up to 0.5 s late)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError:
        pass


def favour(pid: int) -> str:
    """Run every thread of ``pid`` (the scripted server, a stand-in for a remote API on its own
    machine) ahead of the rest, where allowed; says which."""
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.setpriority(os.PRIO_PROCESS, int(tid), -10)
        return "server at high priority"
    except OSError:
        return "server at normal priority (not allowed to raise it)"


def measure_load(url: str, sessions: int, targets: int, runs: int,
                 tokens: int) -> tuple[list[Sample], str, str]:
    from gradio_client import Client

    models = {label_of(load_model(i)): load_model(i) for i in range(targets)}
    ids = [f"bench-{load_model(i)}" for i in range(targets)]
    barrier = threading.Barrier(sessions + 1)
    sources: set[str] = set()

    def session(s: int) -> list[Sample]:
        yield_cpu()
        client, failure = None, None
        try:
            client = Client(url, verbose=False)
        except Exception as exc:  # noqa: BLE001 - this session's runs count as errors
            failure = repr(exc)
        barrier.wait(timeout=300)
        done = []
        for r in range(runs):
            prompt = f"{PROMPT} (session {s} run {r})"
            start = time.perf_counter()
            try:
                if client is None:
                    raise RuntimeError(f"no gradio_client session: {failure}")
                job = client.submit(*run_args(prompt, ids, tokens), api_name="/run")
                job.result(timeout=RUN_TIMEOUT_S)
                wall = time.perf_counter() - start
                streams, source = final_streams(job.outputs()[-1], prompt, models)
                sources.add(source)
            except Exception as exc:  # noqa: BLE001 - counted as errors, the others go on
                wall, streams = time.perf_counter() - start, [Stream((m, prompt), None, None, error=repr(exc))
                                                             for m in models.values()]
            done.append(Sample(wall, streams))
        return done

    stop, counts = threading.Event(), [0, 0]
    with ThreadPoolExecutor(sessions + LOADERS) as pool:
        futures = [pool.submit(session, s) for s in range(sessions)]
        barrier.wait(timeout=300)  # every session has its client: start together, and start loading pages
        loaders = [pool.submit(load_pages, url, stop, time.monotonic() + 600, counts) for _ in range(LOADERS)]
        try:
            samples = [sample for f in futures for sample in f.result(timeout=RUN_TIMEOUT_S * (runs + 1))]
        finally:
            stop.set()
            for f in loaders:
                f.result(timeout=60)
    return samples, " + ".join(sorted(sources)) or "none", f"{counts[0]} page loads ({counts[1]} failed)"


# --- the tables -------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float | None:
    return metrics.percentile(values, q)


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def median_wall(s: Scored, ideal_s: float) -> float | None:
    return statistics.median(s.walls) / ideal_s if s.walls else None


CLI_ROWS = {  # metric: (figure, digits, aim)
    "wall ÷ ideal": (lambda s, ideal: median_wall(s, ideal), 3, "≤ 1.05"),
    "TTFT error p50 (ms)": (lambda s, ideal: pct(s.ttft_ms, 50), 1, "≤ 10"),
    "TTFT error p95 (ms)": (lambda s, ideal: pct(s.ttft_ms, 95), 1, "≤ 10 at N=8"),
    "decode error p95 (%)": (lambda s, ideal: pct(s.decode_pct, 95), 2, "≤ 2"),
    "errors": (lambda s, ideal: float(s.errors), 0, "0"),
}


def cli_table(tallies: dict[int, dict[str, list[Sample]]], index: dict[Key, list[Received]],
              scripts: dict[str, Script], ideal: float) -> str:
    lines = ["| N | metric | ours | bare SDK | warmed SDK | ours / bare | ours / warmed | aim |",
             "|---|---|---|---|---|---|---|---|"]
    for n, by_side in tallies.items():
        scored = {side: score(by_side[side], index, scripts) for side in SIDES}
        for name, (figure, digits, aim) in CLI_ROWS.items():
            got = {side: figure(scored[side], ideal) for side in SIDES}
            cells = [fmt(got[side], digits) for side in SIDES]
            ours = got["ours"]
            cells += [f"{ours / got[side]:.2f}" if ours is not None and got[side] and abs(got[side]) > 1e-9
                      and name != "errors" else "n/a" for side in SIDES[1:]]
            lines.append(f"| {n} | {name} | {' | '.join(cells)} | {aim} |")
    return "\n".join(lines)


@dataclass
class ModeResult:
    """One column of the modes table."""

    title: str
    scored: Scored
    ideal_s: float
    source: str  # where the app's figures came from, hence their precision
    setting: str


MODE_ROWS = {  # metric: (cell, aim)
    "streams measured": (lambda m: str(m.scored.streams), ""),
    "errors": (lambda m: str(m.scored.errors), "0"),
    "TTFT error p50 (ms)": (lambda m: fmt(pct(m.scored.ttft_ms, 50)), ""),
    "TTFT error p95 (ms)": (lambda m: fmt(pct(m.scored.ttft_ms, 95)), "≤ 10 (cli, ui); ≤ 25 (load)"),
    "TTFT error max (ms)": (lambda m: fmt(max(m.scored.ttft_ms, default=None)), ""),
    "decode error p50 (%)": (lambda m: fmt(pct(m.scored.decode_pct, 50), 2), ""),
    "decode error p95 (%)": (lambda m: fmt(pct(m.scored.decode_pct, 95), 2), "≤ 2"),
    "decode error max (%)": (lambda m: fmt(max(m.scored.decode_pct, default=None), 2), ""),
    "app's worst clock_lag_ms": (lambda m: fmt(max(m.scored.lag_ms, default=None)) if m.scored.lag_ms
                                 else "not reported", ""),
    "TTFT error beyond the column's own ±": (lambda m: f"{m.scored.beyond_bar} of {m.scored.with_bar}"
                                             if m.scored.with_bar else "not reported", "0"),
    "stamped in: streams, TTFT error p95 (ms)": (lambda m: "; ".join(
        f"{where} {len(errors)}, {fmt(pct(errors, 95))}" for where, errors in sorted(m.scored.stamped_in.items()))
        or "not reported", ""),
    "wall ÷ ideal (median run)": (lambda m: fmt(median_wall(m.scored, m.ideal_s), 3), ""),
    "server late p95 (ms)": (lambda m: fmt(pct(m.scored.late_ms, 95)), ""),
    "app figures from": (lambda m: m.source, ""),
    "setting": (lambda m: m.setting, ""),
}


def modes_table(results: list[ModeResult]) -> str:
    lines = [f"| metric | {' | '.join(m.title for m in results)} | aim |", "|---" * (len(results) + 2) + "|"]
    lines += [f"| {name} | {' | '.join(cell(m) for m in results)} | {aim} |"
              for name, (cell, aim) in MODE_ROWS.items()]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="cli,ui,load", help="any of cli, ui, load, comma-separated")
    parser.add_argument("--server", choices=["process", "thread"], default="process",
                        help="thread: cli mode only, to compare placements")
    parser.add_argument("--repeats", type=int, default=3,
                        help="cli: runs per N and side; ui: runs in the page")
    parser.add_argument("--ns", default="1,2,4,8", help="cli: concurrent targets")
    parser.add_argument("--ui-columns", type=int, default=MAX_COLUMNS)
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--load-targets", type=int, default=4)
    parser.add_argument("--load-runs", type=int, default=3)
    parser.add_argument("--ttft-ms", type=float, default=200)
    parser.add_argument("--ttft-spread-ms", type=float, default=0,
                        help="column i of n gets TTFT ttft + spread * i / (n - 1): first tokens land "
                             "apart, so a block on the app's loop after one column's first token shows in "
                             "another's")
    parser.add_argument("--rate", type=float, default=50, help="scripted tokens per second")
    parser.add_argument("--tokens", type=int, default=100, help="cli and ui modes")
    parser.add_argument("--load-tokens", type=int, default=50)
    args = parser.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.ns = [int(n) for n in args.ns.split(",")]
    if unknown := set(args.modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}; known: {', '.join(MODES)}")
    if args.server == "thread" and set(args.modes) != {"cli"}:
        parser.error("--server thread is for --modes cli only")
    if not 1 <= args.ui_columns <= MAX_COLUMNS or not 1 <= args.load_targets <= MAX_COLUMNS:
        parser.error(f"the UI has 1 to {MAX_COLUMNS} columns")
    return args


def all_scripts(args: argparse.Namespace) -> dict[str, Script]:
    """A script per model name: every CLI column, UI column and load column has its own."""
    def script(i: int, n: int, tokens: int) -> Script:
        ttft = (args.ttft_ms + args.ttft_spread_ms * i / max(n - 1, 1)) / 1000
        return Script(tokens=tokens, ttft_s=ttft, interval_s=1 / args.rate)

    scripts = {f"cli-{side}-warmup": script(0, 1, args.tokens) for side in SIDES}
    scripts |= {cli_model(side, r, n, i): script(i, n, args.tokens) for r in range(args.repeats)
                for n in args.ns for side in SIDES for i in range(n)}
    scripts |= {ui_model(i): script(i, args.ui_columns, args.tokens) for i in range(args.ui_columns)}
    return scripts | {load_model(i): script(i, args.load_targets, args.load_tokens)
                      for i in range(args.load_targets)}


def main() -> None:
    args = parse_args()
    scripts = all_scripts(args)
    ideal = (args.ttft_ms + args.ttft_spread_ms) / 1000 + (args.tokens - 1) / args.rate  # the slowest column
    load_ideal = ideal + (args.load_tokens - args.tokens) / args.rate
    started, load_before = time.perf_counter(), os.getloadavg()  # other work on the machine skews figures
    tallies: dict[int, dict[str, list[Sample]]] = {}
    ui: tuple[list[Sample], str] | None = None
    loaded: tuple[list[Sample], str, str] | None = None
    loads: dict[str, float] = {}
    stalls: list[str] = []
    server = ServerProcess(scripts) if args.server == "process" else ScriptedServer(scripts)
    with server:
        if "cli" in args.modes:
            loads["cli"] = os.getloadavg()[0]
            tallies = asyncio.run(measure_cli(server.base_url, args.ns, args.repeats, args.tokens))
        if "ui" in args.modes or "load" in args.modes:
            models = [ui_model(i) for i in range(args.ui_columns)]
            models += [load_model(i) for i in range(args.load_targets)]
            with tempfile.TemporaryDirectory(prefix="pp-fanout-") as tmp, \
                    playground_app(server.base_url, models, args.ui_columns, Path(tmp)) as url:
                if "ui" in args.modes:
                    loads["ui"] = os.getloadavg()[0]
                    ui = measure_ui(url, args.ui_columns, args.repeats, Path(tmp))
                if "load" in args.modes:
                    loads["load"] = os.getloadavg()[0]
                    favoured = favour(server.pid) if isinstance(server, ServerProcess) and server.pid else ""
                    loaded = measure_load(url, args.sessions, args.load_targets, args.load_runs,
                                          args.load_tokens)
                    loaded = (*loaded[:2], f"{loaded[2]}; load generator at the lowest priority; {favoured}")
                stalls = [line for line in (Path(tmp) / "app.log").read_text(errors="replace").splitlines()
                          if "blocked for" in line or "overdue by" in line]
    index = server_index(server.received)
    late = [(r.first_token_at - r.at - scripts[model].ttft_s) * 1000 for (model, _), found in index.items()
            for r in found if model in scripts and r.first_token_at is not None and len(r.events) > 2]
    spread = f" to {args.ttft_ms + args.ttft_spread_ms:g}" if args.ttft_spread_ms else ""
    print(f"scripted: TTFT {args.ttft_ms:g}{spread} ms, {args.rate:g} tok/s, {args.tokens} tokens (cli, ui), "
          f"{args.load_tokens} tokens (load); server in a {args.server}; modes {','.join(args.modes)}; "
          f"server late p50 {fmt(pct(late, 50))} ms, p95 {fmt(pct(late, 95))} ms; "
          f"took {time.perf_counter() - started:.0f} s; load average {load_before[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after, {os.cpu_count()} CPUs\n")
    results = []
    if tallies:
        top = max(args.ns)
        for side, title in (("ours", "cli: ours"), ("warm", "cli: warmed SDK")):
            results.append(ModeResult(f"{title}, N={top}", score(tallies[top][side], index, scripts), ideal,
                                      "unrounded, in process", f"{top} streams at once, {args.repeats} runs; "
                                                   f"load {loads['cli']:.1f}"))
    if ui is not None:
        results.append(ModeResult(
            f"ui + Chromium, {args.ui_columns} cols", score(ui[0], index, scripts), ideal, ui[1],
            f"{args.ui_columns} columns (the UI has at most {MAX_COLUMNS}), {args.repeats} runs typed in the "
            f"page; load {loads['ui']:.1f}"))
    if loaded is not None:
        results.append(ModeResult(
            f"load: {args.sessions} sessions × {args.load_targets}", score(loaded[0], index, scripts),
            load_ideal, loaded[1], f"{args.sessions} gradio_client sessions × {args.load_runs} runs, "
                                   f"{loaded[2]}; load {loads['load']:.1f}"))
    print(modes_table(results))
    for result in results:
        for text in result.scored.error_texts[:5]:
            print(f"\nerror ({result.title}): {text[:300]}")
    if stalls:  # the app's own reports of a loop blocked for 100 ms or more (PLAYGROUND_STALL_TRACE=1: stacks)
        print(f"\nthe app logged {len(stalls)} stalls:\n" + "\n".join(stalls[:20]))
    if tallies:
        print("\ncli mode, every N (errors against the server's stamps):\n")
        print(cli_table(tallies, index, scripts, ideal))


if __name__ == "__main__":
    main()
