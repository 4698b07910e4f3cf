"""Browser streaming benchmark: what a person sees in Chromium, the playground against a bare Gradio 6 app.

Both apps run as processes of their own on loopback, side by side in one run, watched by one
headless Chromium (Playwright). The playground's columns are OpenAI-compatible targets on the
scripted server of ``tests/sse_server.py``, itself in a third process (``ServerProcess``), which
stamps every content chunk it writes. The bare app is six ``gr.Textbox`` outputs of one async
generator that makes the same tokens ("t0 t1 ...") on the same schedule and yields every 50 ms
(20 Hz), the least a Gradio app can do; its tokens count as made at their scheduled time.

Delays are measured from the moment a token was made (the scripted server wrote it; the bare
generator's schedule reached it) to the first animation frame in which the page shows it: a
``requestAnimationFrame`` loop in the page reads every column's latest answer each frame (the
playground's live box while a run streams, its chat after; the bare app's textbox) and keeps the
frames whose text changed. The page's clock (``performance.timeOrigin + now()``) is
mapped onto ``time.perf_counter()`` (one clock across processes on Linux) by reading it from
Python between two perf_counter stamps, keeping the tightest of several tries: the mapping's
error is at most half that round trip, printed as ``clock ±``.

Cases, each on both apps:

- 6 × 50 tok/s × 100 tokens (TTFT 0.2 s): first and last token on screen, and the CPU time of the
  app's processes (user + system of the app and every process under it, from the key press or
  click until the run has finished; the share of its child processes on a line of its own: under
  load the playground reads HTTP streams in a measurement process), on the first run after a page load
  in a new app process, on the first run after a page load in an app that has run before, and
  on later runs in the same page;
- 6 × 500 tok/s × 500 tokens: distinct frames the page showed per second while text streamed;
- two browser sessions streaming the 50 tok/s case at once.

The two apps take turns, run by run, so that both meet the same moments of a busy machine. Each
cell is the median over columns and runs, with the range in brackets.

The CPU goal (at most 1.5 × the bare app's) is the 50 tok/s case's, as issue 8 measured it; at 500
tok/s the ratio is printed too, but the bare app's work does not grow with the token rate.
``--measure-process 1`` (or 0) pins where the playground stamps HTTP streams, to compare with its
default (auto: on its own thread at this load).

    .venv/bin/python bench/browser_stream.py [--quick] [--columns 6] [--later-runs 2] [--measure-process auto]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

BARE_FRAME_S = 0.05  # the bare app yields at 20 Hz
TTFT_S = 0.2
SETTLE_S = 0.3  # after a run has finished, before its CPU time is read
MEASURE_WHERE = {"auto": "by load (the app's default)", "1": "in the measurement process",
                 "0": "on the app's measurement thread"}
BARE_POLL_ENV = "PP_BARE_QUEUE_POLL_S"  # --bare-queue-poll-ms, handed to the bare app's process

# --- the page's probe ------------------------------------------------------------------------
# Each animation frame, read every column's latest answer, find the last token in it ("t41 "),
# and keep the frame if any column changed. A column counts only once its answer differs from
# what it showed when the probe started (a bare textbox still holds the previous run's text).
PROBE_JS = """([app, count]) => {
  const readers = {
    bare: (i) => { const el = document.querySelector(`#bare-${i} textarea`); return el ? el.value : ""; },
    playground: (i) => {
      const live = document.querySelector(`#col-${i}-live textarea`);  // the answer streams here, when there is one
      if (live && live.value) return live.value;
      const bots = document.querySelectorAll(`#col-${i}-chat [data-testid="bot"]`);
      return bots.length > window.__bs.bots[i] ? bots[bots.length - 1].textContent : "";
    },
  };
  const read = readers[app];
  if (window.__bs) window.__bs.running = false;
  const st = window.__bs = {running: true, frames: [], last: "", bots: [], base: [], fresh: []};
  for (let i = 0; i < count; i++) {
    st.bots.push(document.querySelectorAll(`#col-${i}-chat [data-testid="bot"]`).length);
  }
  for (let i = 0; i < count; i++) { st.base.push(read(i)); st.fresh.push(false); }
  const tail = /t(\\d+)\\s*$/;
  const step = () => {
    if (!st.running) return;
    const now = performance.timeOrigin + performance.now();
    const idx = [];
    for (let i = 0; i < count; i++) {
      const text = read(i);
      if (!st.fresh[i] && text !== st.base[i]) st.fresh[i] = true;
      const m = st.fresh[i] ? tail.exec(text) : null;
      idx.push(m ? Number(m[1]) : -1);
    }
    const key = idx.join(",");
    if (key !== st.last) { st.frames.push([now, idx]); st.last = key; }
    requestAnimationFrame(step);
  };
  requestAnimationFrame(step);
}"""
SHOWN_ALL_JS = """([count, last]) => {
  const st = window.__bs; if (!st || !st.frames.length) return false;
  const idx = st.frames[st.frames.length - 1][1];
  return idx.length === count && idx.every((v) => v >= last);
}"""
SEEN_JS = """(count) => JSON.stringify({frames: window.__bs ? window.__bs.frames.length : null,
  status: Array.from({length: count}, (_, i) => (document.querySelector(`#col-${i}-status`) || {}).innerText || ""),
  prompt: (document.querySelector('#prompt textarea') || {}).value,
  toast: Array.from(document.querySelectorAll('.toast-body')).map((t) => t.innerText)})"""
PLAYGROUND_DONE_JS = """(count) => Array.from({length: count}, (_, i) => {
  const el = document.querySelector(`#col-${i}-status`);
  return el ? el.innerText : "";
}).every((t) => /done|stopped|error/.test(t)) &&
  !!document.querySelector('#download-csv') && document.querySelector('#download-csv').offsetParent !== null"""


# --- the bare app ----------------------------------------------------------------------------
def serve_bare(port: int, log_path: str, columns: int) -> None:
    """Six textboxes streamed at 20 Hz by one async generator: Gradio's floor."""
    import gradio as gr

    def text(count: int) -> str:
        return "".join(f"t{i} " for i in range(count))

    async def stream(run_id: str, rate: float, tokens: float, ttft_ms: float) -> Any:
        start = time.perf_counter()
        first_at, interval, total = start + ttft_ms / 1000, 1 / float(rate), int(tokens)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"run": run_id, "first_at": first_at, "interval": interval, "tokens": total}) + "\n")
        tick = start
        while True:
            now = time.perf_counter()
            due = 0 if now < first_at else min(total, int((now - first_at) / interval) + 1)
            yield [text(due)] * columns
            if due >= total:
                return
            tick += BARE_FRAME_S
            await asyncio.sleep(max(0.0, tick - time.perf_counter()))

    with gr.Blocks(title="bare") as demo:
        with gr.Row():
            run_id = gr.Textbox(label="run", elem_id="run-id")
            rate = gr.Number(50, label="tok/s", elem_id="rate")
            tokens = gr.Number(100, label="tokens", elem_id="tokens")
            ttft = gr.Number(TTFT_S * 1000, label="TTFT ms", elem_id="ttft")
        button = gr.Button("Run", elem_id="run")
        with gr.Row():
            boxes = [gr.Textbox(label=f"column {i}", lines=8, max_lines=8, elem_id=f"bare-{i}") for i in range(columns)]
        button.click(stream, [run_id, rate, tokens, ttft], boxes, show_progress="hidden")
    demo.queue(default_concurrency_limit=64)
    if (poll := os.environ.get(BARE_POLL_ENV)) is not None:  # --bare-queue-poll-ms: to compare like for like
        from playground.settings import PROGRESS_POLL_S  # not playground.ui: the bare app stays bare

        demo._queue.sleep_when_free = float(poll)
        demo._queue.progress_update_sleep_when_free = PROGRESS_POLL_S
    demo.launch(server_name="127.0.0.1", server_port=port, quiet=True)


# --- the apps, as processes --------------------------------------------------------------------
@dataclass
class App:
    name: str  # "playground" | "bare"
    url: str
    proc: subprocess.Popen
    bare_log: Path | None = None

    def cpu_s(self) -> tuple[float, float]:
        """User + system time of the app's process and every process under it (the playground reads
        HTTP streams in a measurement process of its own under load), and of children that have exited: the
        total, and the part spent in child processes."""
        import psutil

        root = psutil.Process(self.proc.pid)
        total = children = 0.0
        for proc in [root, *root.children(recursive=True)]:
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            spent = t.user + t.system + t.children_user + t.children_system
            total += spent
            children += (spent if proc is not root else t.children_user + t.children_system)
        return total, children

    def bare_runs(self) -> dict[str, dict[str, Any]]:
        assert self.bare_log is not None
        runs = {}
        for line in self.bare_log.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            runs[entry["run"]] = entry
        return runs


def catalog_yaml(base_url: str, columns: int) -> str:
    lines = [f"defaults: [{', '.join(f'bench-slow-{i}' for i in range(columns))}]", "targets:"]
    for speed in ("slow", "fast"):
        for i in range(columns):
            lines += [f"  - id: bench-{speed}-{i}", f"    label: bench {speed} {i}", "    backend: openai",
                      f"    model: {speed}-{i}", f"    base_url: {base_url}", "    timeout_s: 120"]
    return "\n".join(lines) + "\n"


@contextmanager
def start_app(name: str, base_url: str, columns: int, tmp: Path, measure: str | None = None) -> Iterator[App]:
    import browser_flow as flow

    port = flow.free_port()
    log = tmp / f"{name}.log"
    if name == "playground":
        catalog = tmp / "catalog.yaml"
        catalog.write_text(catalog_yaml(base_url, columns))
        env = flow.app_env(PLAYGROUND_HOST="127.0.0.1", PLAYGROUND_PORT=str(port), PLAYGROUND_COLUMNS=str(columns),
                           PLAYGROUND_CATALOG=str(catalog))
        if measure is not None:
            env["PLAYGROUND_MEASURE_PROCESS"] = measure
        cmd = [sys.executable, "app.py"]
        bare_log = None
    else:
        bare_log = tmp / "bare-runs.jsonl"
        bare_log.touch()
        env = flow.app_env()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-bare", str(port), str(bare_log), str(columns)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        flow.wait_http_ok(url, proc, 180, log)
        yield App(name, url, proc, bare_log)
    finally:
        flow.stop_process(proc)


# --- one page ---------------------------------------------------------------------------------
@dataclass
class Shown:
    """What one page showed during one run, on the perf_counter clock."""

    run_id: str
    frames: list[tuple[float, list[int]]]  # (perf_counter, last token index per column)
    clock_err_s: float
    pressed: float

    def first_seen(self, column: int, token: int) -> float | None:
        return next((t for t, idx in self.frames if idx[column] >= token), None)


class Page:
    def __init__(self, browser: Any, app: App, columns: int):
        import browser_flow as flow

        self.app, self.columns = app, columns
        self.page = flow.new_page(browser, flow.DESKTOP)
        self.page.goto(app.url, wait_until="domcontentloaded")
        if app.name == "playground":
            flow.open_app(self.page, app.url)
            self.page.wait_for_selector(f"#col-{columns - 1}-chat", state="visible", timeout=90_000)
            flow.set_parameter(self.page, "max-tokens", 1000)
        else:
            self.page.wait_for_selector(f"#bare-{columns - 1} textarea", state="visible", timeout=90_000)
        self.speed = "slow"

    def close(self) -> None:
        self.page.context.close()

    def clock(self, tries: int = 12) -> tuple[float, float]:
        """(offset, error): page ms / 1000 - offset is perf_counter, within ± error seconds."""
        best = (0.0, float("inf"))
        for _ in range(tries):
            before = time.perf_counter()
            page_ms = self.page.evaluate("performance.timeOrigin + performance.now()")
            after = time.perf_counter()
            if (after - before) / 2 < best[1]:
                best = (page_ms / 1000 - (before + after) / 2, (after - before) / 2)
        return best

    def use_speed(self, speed: str, rate: float, tokens: int) -> None:
        import browser_flow as flow

        if self.app.name == "playground":
            if speed != self.speed:
                for i in range(self.columns):
                    flow.pick_target(self.page, i, f"bench {speed} {i}")
        else:
            for elem, value in (("rate", rate), ("tokens", tokens)):
                box = self.page.locator(f"#{elem} input")
                box.fill(str(value))
                box.press("Tab")
        self.speed = speed

    def press(self, run_id: str) -> float:
        """Start the probe, then press Enter (playground) or click Run (bare); the perf_counter just before."""
        self.page.evaluate(PROBE_JS, [self.app.name, self.columns])
        if self.app.name == "playground":
            box = self.page.locator("#prompt textarea")
            box.fill(run_id)
            pressed = time.perf_counter()
            box.press("Enter")
        else:
            box = self.page.locator("#run-id textarea")
            box.fill(run_id)
            box.press("Tab")
            pressed = time.perf_counter()
            self.page.locator("#run").click()
        return pressed

    def wait_shown(self, tokens: int, timeout_s: float = 90) -> None:
        try:
            self.page.wait_for_function(SHOWN_ALL_JS, arg=[self.columns, tokens - 1], timeout=timeout_s * 1000,
                                        polling=50)
        except Exception as exc:  # what the page showed instead, for whoever reads the failure
            seen = self.page.evaluate(SEEN_JS, self.columns)
            raise RuntimeError(f"the {self.app.name} page did not show all {tokens} tokens in {timeout_s:g} s "
                               f"({type(exc).__name__}); it showed: {seen}") from None

    def wait_finished(self, timeout_s: float = 60) -> None:
        if self.app.name == "playground":
            self.page.wait_for_function(PLAYGROUND_DONE_JS, arg=self.columns, timeout=timeout_s * 1000, polling=50)

    def collect(self, run_id: str, pressed: float) -> Shown:
        frames = self.page.evaluate("window.__bs.running = false, window.__bs.frames")
        offset, err = self.clock()
        return Shown(run_id, [(t / 1000 - offset, idx) for t, idx in frames], err, pressed)


# --- runs -------------------------------------------------------------------------------------
@dataclass
class Measured:
    """One case on one app: delays in seconds, per column and run; frames; CPU per run."""

    first_s: list[float] = field(default_factory=list)
    last_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    cpu_children_s: list[float] = field(default_factory=list)
    frame_rates: list[float] = field(default_factory=list)
    frames_note: list[str] = field(default_factory=list)
    clock_err_s: float = 0.0


@dataclass
class Plan:
    columns: int
    slow_tokens: int
    fast_tokens: int
    later_runs: int
    slow_rate: float = 50.0
    fast_rate: float = 500.0


class Bench:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.pending: list[tuple[str, str, str, Shown]] = []  # (app, case, speed, what it showed)
        self.cpu: dict[tuple[str, str], list[float]] = {}
        self.cpu_children: dict[tuple[str, str], list[float]] = {}
        self.counter = 0

    def run(self, pages: list[Page], case: str, speed: str) -> None:
        """One run in each page at once; wait until every page shows every last token and finished."""
        plan = self.plan
        rate, tokens = (plan.slow_rate, plan.slow_tokens) if speed == "slow" else (plan.fast_rate, plan.fast_tokens)
        for page in pages:
            page.use_speed(speed, rate, tokens)
        app = pages[0].app
        ids = []
        for _ in pages:
            self.counter += 1
            ids.append(f"bench run {self.counter}")
        cpu_before = app.cpu_s()
        pressed = [page.press(run_id) for page, run_id in zip(pages, ids)]
        for page in pages:
            page.wait_shown(tokens)
        for page in pages:
            page.wait_finished()
        time.sleep(SETTLE_S)
        cpu_after = app.cpu_s()
        self.cpu.setdefault((app.name, case), []).append(cpu_after[0] - cpu_before[0])
        self.cpu_children.setdefault((app.name, case), []).append(cpu_after[1] - cpu_before[1])
        for page, run_id, at in zip(pages, ids, pressed):
            self.pending.append((app.name, case, speed, page.collect(run_id, at)))

    def made_times(self, app_name: str, run_id: str, server: Any, bare: dict[str, dict[str, Any]],
                   speed: str) -> list[list[float]]:
        """Per column, when each token was made (perf_counter)."""
        if app_name == "bare":
            entry = bare[run_id]
            times = [entry["first_at"] + k * entry["interval"] for k in range(entry["tokens"])]
            return [times] * self.plan.columns
        made = []
        for i in range(self.plan.columns):
            matches = [r for r in server.received if r.path.endswith("/chat/completions") and isinstance(r.body, dict)
                       and r.body.get("model") == f"{speed}-{i}" and prompt_of(r.body) == run_id]
            if len(matches) != 1:
                raise RuntimeError(f"{run_id}: {len(matches)} requests reached {speed}-{i}")
            made.append(matches[0].events)
        return made

    def measure(self, server: Any, bare: dict[str, dict[str, Any]]) -> dict[tuple[str, str], Measured]:
        out: dict[tuple[str, str], Measured] = {}
        for app_name, case, speed, shown in self.pending:
            m = out.setdefault((app_name, case), Measured())
            m.clock_err_s = max(m.clock_err_s, shown.clock_err_s)
            made = self.made_times(app_name, shown.run_id, server, bare, speed)
            for column, times in enumerate(made):
                first, last = shown.first_seen(column, 0), shown.first_seen(column, len(times) - 1)
                if first is None or last is None:
                    raise RuntimeError(f"{app_name} {shown.run_id}: column {column} never showed its tokens")
                m.first_s.append(first - times[0])
                m.last_s.append(last - times[-1])
            streaming = [(t, idx) for t, idx in shown.frames if max(idx) >= 0]
            if len(streaming) >= 2:
                span = streaming[-1][0] - streaming[0][0]
                m.frame_rates.append((len(streaming) - 1) / span if span > 0 else 0.0)
                m.frames_note.append(f"{len(streaming)} in {span:.2f} s")
        for key, values in self.cpu.items():
            out.setdefault(key, Measured()).cpu_s = values
            out[key].cpu_children_s = self.cpu_children.get(key, [])
        return out


def prompt_of(body: Any) -> str:
    content = body["messages"][-1]["content"] if isinstance(body, dict) else ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def drive(browser: Any, app: App, bench: Bench) -> Iterator[None]:
    """Every case, on one app, pausing after each run (so that two apps can take turns)."""
    plan = bench.plan
    first = Page(browser, app, plan.columns)  # the app's first page: its process has not run yet
    try:
        bench.run([first], "first run after a page load, new app process", "slow")
        yield
        for _ in range(plan.later_runs):
            bench.run([first], "later runs in the same page", "slow")
            yield
    finally:
        first.close()
    second = Page(browser, app, plan.columns)
    try:
        bench.run([second], "first run after a page load, app warm", "slow")
        yield
        bench.run([second], "fast", "fast")
        yield
    finally:
        second.close()
    pair = [Page(browser, app, plan.columns) for _ in range(2)]
    try:
        bench.run(pair, "two sessions at once, first run after a page load", "slow")
        yield
        bench.run(pair, "two sessions at once, later run", "slow")
        yield
    finally:
        for page in pair:
            page.close()


def take_turns(runs: list[Iterator[None]]) -> None:
    """One run of each app in turn, so that both see the same moments of a busy machine."""
    while runs:
        for run in list(runs):
            if next(run, StopIteration) is StopIteration:
                runs.remove(run)


# --- the table --------------------------------------------------------------------------------
def cell(values: list[float], scale: float = 1000, digits: int = 0) -> str:
    if not values:
        return "–"
    med = statistics.median(values) * scale
    low, high = min(values) * scale, max(values) * scale
    if len(values) == 1 or abs(high - low) < 10 ** -digits:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def compare(ours: list[float], bare: list[float], scale: float, digits: int) -> tuple[str, str]:
    if not ours or not bare:
        return "–", "–"
    a, b = statistics.median(ours), statistics.median(bare)
    diff = f"{(a - b) * scale:+.{digits}f}"
    return diff, (f"{a / b:.2f}×" if abs(b) > 1e-9 else "–")


GOALS = {"first token on screen (ms)": "≤ 100", "last token on screen (ms)": "≤ 150",
         "server CPU per run (s)": "≤ 1.5 × bare", "frames shown per second": "≥ 10"}


def table(results: dict[tuple[str, str], Measured], cases: list[tuple[str, str]]) -> str:
    lines = ["| case | metric | Phi Playground | bare app at 20 Hz | difference | ratio | goal |",
             "|---|---|---|---|---|---|---|"]
    for case, label in cases:
        ours, bare = results.get(("playground", case), Measured()), results.get(("bare", case), Measured())
        rows: list[tuple[str, list[float], list[float], float, int]] = []
        if case == "fast":
            rows.append(("frames shown per second", ours.frame_rates, bare.frame_rates, 1, 1))
        rows += [("first token on screen (ms)", ours.first_s, bare.first_s, 1000, 0),
                 ("last token on screen (ms)", ours.last_s, bare.last_s, 1000, 0),
                 ("server CPU per run (s)", ours.cpu_s, bare.cpu_s, 1, 2)]
        for metric, a, b, scale, digits in rows:
            diff, ratio = compare(a, b, scale, digits)
            goal = "(for information)" if case == "fast" and metric == "server CPU per run (s)" else GOALS[metric]
            lines.append(f"| {label} | {metric} | {cell(a, scale, digits)} | {cell(b, scale, digits)} | "
                         f"{diff} | {ratio} | {goal} |")
        if any(ours.cpu_children_s) or any(bare.cpu_children_s):
            lines.append(f"| {label} | of which in child processes (s) | {cell(ours.cpu_children_s, 1, 2)} | "
                         f"{cell(bare.cpu_children_s, 1, 2)} | | | |")
        if case == "fast":
            lines.append(f"| {label} | frames (count in streaming time) | {', '.join(ours.frames_note) or '–'} | "
                         f"{', '.join(bare.frames_note) or '–'} | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny pass: 2 columns, few tokens, one later run")
    parser.add_argument("--columns", type=int, default=None)
    parser.add_argument("--later-runs", type=int, default=None)
    parser.add_argument("--only", choices=["playground", "bare"], default=None, help="measure one app only")
    parser.add_argument("--bare-queue-poll-ms", type=float, default=None,
                        help="poll the bare app's Gradio queue this often (default: Gradio's 1 ms; the playground's is 10)")
    parser.add_argument("--measure-process", choices=["0", "1", "auto"], default=None,
                        help="the playground's PLAYGROUND_MEASURE_PROCESS (default: the app's own, auto)")
    parser.add_argument("--serve-bare", nargs=3, metavar=("PORT", "LOG", "COLUMNS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        port, log, columns = args.serve_bare
        serve_bare(int(port), log, int(columns))
        return
    if args.bare_queue_poll_ms is not None:
        os.environ[BARE_POLL_ENV] = str(args.bare_queue_poll_ms / 1000)  # the bare app's process inherits it
    import browser_flow as flow
    from sse_server import Script, ServerProcess

    from playground.settings import QUEUE_POLL_S

    plan = (Plan(columns=args.columns or 2, slow_tokens=10, fast_tokens=50, later_runs=args.later_runs or 1)
            if args.quick else
            Plan(columns=args.columns or 6, slow_tokens=100, fast_tokens=500,
                 later_runs=2 if args.later_runs is None else args.later_runs))
    scripts = {}
    for i in range(plan.columns):
        scripts[f"slow-{i}"] = Script(tokens=plan.slow_tokens, ttft_s=TTFT_S, interval_s=1 / plan.slow_rate)
        scripts[f"fast-{i}"] = Script(tokens=plan.fast_tokens, ttft_s=TTFT_S, interval_s=1 / plan.fast_rate)
    started, load = time.perf_counter(), os.getloadavg()
    bench = Bench(plan)
    names = [args.only] if args.only else ["bare", "playground"]
    server = ServerProcess(scripts)
    with tempfile.TemporaryDirectory(prefix="pp-browser-stream-") as tmp, ExitStack() as stack:
        stack.enter_context(server)
        apps = {name: stack.enter_context(start_app(name, server.base_url, plan.columns, Path(tmp),
                                                            args.measure_process))
                for name in names}
        with flow.chromium() as browser:
            take_turns([drive(browser, apps[name], bench) for name in names])
        bare_runs = apps["bare"].bare_runs() if "bare" in apps else {}
        stack.close()  # the server hands over what it received once it stops
        results = bench.measure(server, bare_runs)
    cases = [("first run after a page load, new app process",
              f"{plan.columns} × {plan.slow_rate:g} tok/s × {plan.slow_tokens}: first run after a page load, new app process"),
             ("first run after a page load, app warm", "same: first run after a page load, app warm"),
             ("later runs in the same page", f"same: later runs in the same page ({plan.later_runs})"),
             ("two sessions at once, first run after a page load", "same, two sessions at once: first run after a page load"),
             ("two sessions at once, later run", "same, two sessions at once: later run"),
             ("fast", f"{plan.columns} × {plan.fast_rate:g} tok/s × {plan.fast_tokens}")]
    err = max((m.clock_err_s for m in results.values()), default=0.0)
    print(f"{plan.columns} columns, TTFT {TTFT_S * 1000:.0f} ms; page clock ±{err * 1000:.1f} ms; "
          f"took {time.perf_counter() - started:.0f} s; load average {load[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after, {os.cpu_count()} CPUs; Gradio's queue polled every "
          f"{QUEUE_POLL_S * 1000:g} ms (playground), "
          f"{1 if args.bare_queue_poll_ms is None else args.bare_queue_poll_ms:g} ms (bare app); "
          f"its summary of past events after each one: off (playground), on (bare app); HTTP streams "
          f"stamped {MEASURE_WHERE[args.measure_process or 'auto']}\n")
    print(table(results, cases))


if __name__ == "__main__":
    main()
