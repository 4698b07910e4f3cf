"""What a person does in the Phi Playground, driven in a real browser (Playwright + Debian's Chromium).

Shared by ``tests/test_browser.py`` (which asserts on what it observes) and ``scripts/screenshot.py``
(which photographs the same run mid-comparison for the README), so the screenshot always shows the
flow the tests check. Nothing here reaches beyond 127.0.0.1: the app runs on loopback with no keys
and the hub offline, and the browser refuses every request to another host.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("PLAYGROUND_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
BUNDLED = ("smollm2-onnx", "smollm2-transformers")  # column 0, column 1 (the reverse of the built-in default)
#: inherited variables a test app must not see: keys, endpoints, user catalogs and the playground's own settings
DROP_ENV_PREFIXES = ("GITHUB_TOKEN", "NVIDIA_API_KEY", "AZURE_", "OPENAI_", "HF_TOKEN", "GRADIO_", "PLAYGROUND_")
# where the built ONNX model is; how many share a model; where runs are recorded (the tests' own database)
KEEP_ENV = ("PLAYGROUND_CACHE", "PLAYGROUND_LOCAL_SLOTS", "PLAYGROUND_DB")

COMPARE_PROMPT = "Explain in three sentences why the sky is blue."
COMPARE_MAX_TOKENS = 48
LONG_PROMPT = "Write a long, detailed story about a lighthouse keeper who befriends a robot. Use at least 800 words."
LONG_MAX_TOKENS = 2000  # with temperature 0 the bundled model writes to the limit: a long stream

# The page records, per column, the status line and the live answer's length on every DOM change
# (a MutationObserver, so no streamed frame is missed) and every 100 ms, keeping only changes. Watching
# from inside the page sees what a person sees, without sleeping in Python.
SAMPLER_JS = """(count) => {
  if (window.__ppObserver) window.__ppObserver.disconnect();
  if (window.__ppTimer) clearInterval(window.__ppTimer);
  window.__ppSamples = [];
  let last = "";
  const read = (i) => {
    const status = document.querySelector(`#col-${i}-status [data-testid="markdown"]`);
    const bots = document.querySelectorAll(`#col-${i}-chat [data-testid="bot"]`);
    const live = document.querySelector(`#col-${i}-live textarea`);
    const state = status ? status.textContent : "";
    let text, placeholder;
    if (live && live.value) {  // while a run streams, the answer grows here as plain text (empty: hidden)
      text = live.value.trim();
      placeholder = state.includes("TTFT –");  // no first token yet: the box shows the column's state
    } else {
      const bot = bots.length ? bots[bots.length - 1] : null;
      text = bot ? bot.textContent.trim() : "";
      const em = bot ? bot.querySelector("em") : null;
      // a column with no text yet shows its state in italics ("*loading: …*"): that is not an answer
      placeholder = !!em && em.textContent.trim() === text && text.endsWith("…");
    }
    return {status: status ? status.textContent.trim() : "", len: placeholder ? 0 : text.length,
            bots: bots.length};
  };
  const tick = () => {
    const cols = Array.from({length: count}, (_, i) => read(i));
    const key = JSON.stringify(cols);
    if (key !== last) { window.__ppSamples.push({t: performance.now(), cols}); last = key; }
  };
  tick();
  window.__ppObserver = new MutationObserver(tick);
  window.__ppObserver.observe(document.querySelector("#columns") || document.body,
                              {subtree: true, childList: true, characterData: true});
  window.__ppTimer = setInterval(tick, 100);
}"""

STATUS_JS = """([count, words]) => Array.from({length: count}, (_, i) => {
  const el = document.querySelector(`#col-${i}-status [data-testid="markdown"]`);
  const text = el ? el.innerText : "";
  return words.some((w) => text.includes(w));
}).every(Boolean)"""

# Each column's latest answer as written (Markdown source): the live box while the run streams, else the
# last chat message, whose accessible name is "bot's message: " and its text
ANSWER_TEXTS_JS = """(count) => Array.from({length: count}, (_, i) => {
  const live = document.querySelector(`#col-${i}-live textarea`);
  if (live && live.value) return live.value.trim();  // empty, and hidden, once the run has ended
  const bots = document.querySelectorAll(`#col-${i}-chat [data-testid="bot"]`);
  const label = bots.length ? bots[bots.length - 1].getAttribute("aria-label") || "" : "";
  return label.replace(/^bot's message: /, "").trim();
})"""

TABLE_JS = """() => {
  const root = document.querySelector('#results');
  if (!root) return [];
  // Gradio 6's dataframe draws its body as virtual rows of grid cells
  return Array.from(root.querySelectorAll('[role="row"].virtual-row'))
    .map((row) => Array.from(row.querySelectorAll('[role="gridcell"]')).map((cell) => cell.innerText.trim()))
    .filter((cells) => cells.some((c) => c !== ''));
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_env(**extra: str) -> dict[str, str]:
    """This environment without keys, endpoints, user catalogs or playground settings; the hub offline."""
    env = {k: v for k, v in os.environ.items() if k in KEEP_ENV or not k.startswith(DROP_ENV_PREFIXES)}
    env.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def wait_http_ok(url: str, proc: subprocess.Popen | None, timeout: float, log: Path | None = None) -> None:
    """Poll ``url`` until it answers 200, the process dies, or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode} before answering{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s{_tail(log)}")
        time.sleep(0.25)  # poll interval, bounded by the deadline above


def _tail(log: Path | None, chars: int = 3000) -> str:
    if log is None or not log.exists():
        return ""
    return "\n--- app log (tail) ---\n" + log.read_text(errors="replace")[-chars:]


def stop_process(proc: subprocess.Popen, grace: float = 10) -> None:
    """Terminate the process group ``proc`` leads; kill it if it does not exit in ``grace`` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait(timeout=grace)


@contextmanager
def running_app(startup_timeout: float = 240, **extra_env: str) -> Iterator[str]:
    """``python app.py`` on a free loopback port with two columns; yields its URL; always stopped."""
    port = free_port()
    env = app_env(PLAYGROUND_HOST="127.0.0.1", PLAYGROUND_PORT=str(port), PLAYGROUND_COLUMNS="2", **extra_env)
    with tempfile.TemporaryDirectory(prefix="pp-browser-") as tmp:
        log = Path(tmp) / "app.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}/"
        try:
            wait_http_ok(url, proc, startup_timeout, log)
            yield url
        finally:
            stop_process(proc)


def warm_up(url: str, targets: tuple[str, ...] = BUNDLED, timeout_s: float = 600) -> None:
    """Load the local models once through Gradio's HTTP API (one token each), so the browser watches
    streams rather than a model load: loading SmolLM2 into transformers takes the process's CPU and
    GIL for up to a minute on two cores, and meanwhile every other column's frames arrive in bursts."""
    def post(path: str, body: dict) -> dict:
        request = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    with urllib.request.urlopen(url + "gradio_api/info", timeout=30) as response:
        params = json.load(response)["named_endpoints"]["/run"]["parameters"]
    prompt = {"text": "Hi", "files": []} if "multimodal" in params[0]["component"].lower() else "Hi"
    slots = [p for p in params if p.get("label", "").startswith("Target")]
    picked = list(targets) + [None] * (len(slots) - len(targets))
    event = post("gradio_api/call/run", {"data": [prompt, "", 0.0, 1.0, 1, None, len(targets), *picked]})
    deadline = time.monotonic() + timeout_s
    kind = ""
    with urllib.request.urlopen(f"{url}gradio_api/call/run/{event['event_id']}", timeout=timeout_s) as stream:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace").strip()
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
                if kind in ("complete", "error"):
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"warming up {targets} took over {timeout_s:.0f} s")
    if kind != "complete":
        raise RuntimeError(f"warming up {targets} failed ({kind or 'no end event'})")


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, through Playwright; always closed."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any, viewport: dict[str, int]) -> Any:
    """A fresh context and page at ``viewport`` that only ever talks to 127.0.0.1."""
    context = browser.new_context(viewport=viewport, accept_downloads=True)
    context.blocked = []

    def only_loopback(route: Any) -> None:
        host = route.request.url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
        if route.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            context.blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    page = context.new_page()
    page.set_default_timeout(60_000)
    return page


@contextmanager
def page_factory(browser: Any) -> Iterator[Callable[..., Any]]:
    """Makes pages (each in a context of its own) at a viewport; on the way out every context is
    closed, and it fails if any page tried to reach beyond loopback."""
    contexts: list[Any] = []

    def make(viewport: dict[str, int] = DESKTOP) -> Any:
        page = new_page(browser, viewport)
        contexts.append(page.context)
        return page

    try:
        yield make
    finally:
        blocked = [url for context in contexts for url in context.blocked]
        for context in contexts:
            context.close()
    assert not blocked, f"the page tried to reach beyond loopback: {blocked[:5]}"


def open_app(page: Any, url: str) -> None:
    page.goto(url, wait_until="domcontentloaded")
    for selector in ("#col-0-target input", "#col-1-chat", "#prompt textarea", "#run", "#stop", "#results"):
        page.wait_for_selector(selector, state="visible", timeout=90_000)


def target_labels() -> dict[str, str]:
    """Target id -> the label its dropdown shows (the built-in catalog)."""
    from playground.catalog import BUILTIN_CATALOG, read_catalog_file

    return {t.id: t.label for t in read_catalog_file(BUILTIN_CATALOG).targets}


def pick_target(page: Any, column: int, label: str, attempts: int = 3) -> None:
    """Click the column's dropdown, type the target's name and click its option, as a person does;
    wait until the box, left, shows the name. (Typed text alone would pass that check: leaving the
    box puts back the chosen target's name. Enter chooses only once the list has filtered.) A box
    that still shows another name is tried again, a bounded number of times."""
    import re

    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    selector = f"#col-{column}-target input"
    box = page.locator(selector)
    option = page.get_by_role("option").filter(has_text=re.compile(rf"^\W*{re.escape(label)}\s*$"))
    for attempt in range(attempts):
        try:
            box.click()
            box.fill(label)
            option.first.click(timeout=5_000)
            box.evaluate("(el) => el.blur()")
            page.wait_for_function("([sel, want]) => document.activeElement !== document.querySelector(sel) "
                                   "&& document.querySelector(sel).value === want",
                                   arg=[selector, label], timeout=5_000)
            return
        except PlaywrightTimeout:
            if attempt == attempts - 1:
                raise


def set_parameter(page: Any, elem_id: str, value: float, attempts: int = 3) -> None:
    """Open *Parameters* if needed, type ``value`` into the slider's number box, press Enter; wait
    until the slider shows it (typing again, a bounded number of times, if the box was re-rendered)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    number = page.locator(f"#{elem_id} input[type=number]")
    slider = f"#{elem_id} input[type=range]"
    for attempt in range(attempts):
        if not number.is_visible():
            page.get_by_text("Parameters", exact=True).click()
            number.wait_for(state="visible", timeout=30_000)
        number.fill(str(value))
        number.press("Enter")
        try:
            page.wait_for_function("([sel, want]) => Number(document.querySelector(sel).value) === want",
                                   arg=[slider, value], timeout=10_000)
            return
        except PlaywrightTimeout:
            if attempt == attempts - 1:
                raise AssertionError(f"#{elem_id} did not take {value}: box {number.input_value()!r}, "
                                     f"slider {page.locator(slider).input_value()!r}") from None


def submit_prompt(page: Any, text: str) -> None:
    box = page.locator("#prompt textarea")
    box.fill(text)
    box.press("Enter")


def wait_statuses(page: Any, count: int, words: tuple[str, ...], timeout_s: float) -> None:
    """Wait until every column's status line contains one of ``words``."""
    page.wait_for_function(STATUS_JS, arg=[count, list(words)], timeout=timeout_s * 1000, polling=100)


def statuses(page: Any, count: int) -> list[str]:
    return [page.locator(f'#col-{i}-status [data-testid="markdown"]').inner_text() for i in range(count)]


def answer_texts(page: Any, count: int) -> list[str]:
    """Each column's latest answer as written (its Markdown source)."""
    return page.evaluate(ANSWER_TEXTS_JS, count)


def table_rows(page: Any) -> list[list[str]]:
    return page.evaluate(TABLE_JS)


def wait_table_rows(page: Any, count: int, timeout_s: float = 30) -> list[list[str]]:
    """The results table arrives in a follow-up event after the statuses end: wait for its rows.
    Any ``count`` rows will do, an earlier run's too: call it on a fresh page or after Clear."""
    page.wait_for_function(f"() => ({TABLE_JS})().length >= {count}", timeout=timeout_s * 1000, polling=100)
    return table_rows(page)


def streaming_lengths(samples: list[dict[str, Any]], column: int) -> list[int]:
    """The answer's length at each change seen while that column said "streaming" (0: nothing yet)."""
    return [s["cols"][column]["len"] for s in samples if "streaming" in s["cols"][column]["status"]]


class ColumnEndedEarly(AssertionError):
    """A column finished before every column was streaming, so Stop could not catch them all."""


@dataclass
class Comparison:
    """What the person saw during one comparison."""

    samples: list[dict[str, Any]]
    statuses: list[str]
    table: list[list[str]]
    csv_path: Path
    elapsed_s: float

    def streaming_lengths(self, column: int) -> list[int]:
        return streaming_lengths(self.samples, column)


@dataclass
class Stopped:
    """What the person saw of a long answer: the samples until Stop; then each column's answer text and
    status when its status first said it had stopped, when the run had ended, and 1.5 s after that."""

    samples: list[dict[str, Any]]
    texts_at_stop: list[str]
    statuses_at_stop: list[str]
    texts_at_end: list[str]
    statuses_at_end: list[str]
    texts_later: list[str]
    statuses_later: list[str]
    stop_to_stopped_s: float
    table: list[list[str]] = field(default_factory=list)


def compare(page: Any, url: str, download_dir: Path, targets: tuple[str, str] = BUNDLED,
            prompt: str = COMPARE_PROMPT, max_tokens: int = COMPARE_MAX_TOKENS, timeout_s: float = 600) -> Comparison:
    """Open the page, pick two targets, type a prompt, press Enter, watch it finish, download the CSV."""
    labels = target_labels()
    open_app(page, url)
    for column, target in enumerate(targets):
        pick_target(page, column, labels[target])
    set_parameter(page, "temperature", 0)  # greedy: each answer runs its full length, no early end of text
    set_parameter(page, "max-tokens", max_tokens)
    page.evaluate(SAMPLER_JS, len(targets))
    started = time.monotonic()
    submit_prompt(page, prompt)
    wait_statuses(page, len(targets), ("done", "stopped", "error"), timeout_s)
    elapsed = time.monotonic() - started
    # the run's last update carries the table and shows the download buttons
    page.locator("#download-csv").wait_for(state="visible", timeout=60_000)
    wait_table_rows(page, len(targets))
    samples = page.evaluate("window.__ppSamples")
    with page.expect_download(timeout=30_000) as info:
        page.locator("#download-csv").click()
    download = info.value
    csv_path = download_dir / (download.suggested_filename or "run.csv")
    download.save_as(csv_path)
    return Comparison(samples, statuses(page, len(targets)), table_rows(page), csv_path, elapsed)


def long_answer_then_stop(page: Any, count: int = 2, prompt: str = LONG_PROMPT, max_tokens: int = LONG_MAX_TOKENS,
                          temperature: float = 0, start_timeout_s: float = 300, min_updates: int = 3,
                          min_chars: int = 1, while_streaming: Callable[[Any], None] | None = None) -> Stopped:
    """Clear, start a long answer in every column; once all of them are streaming together, and each
    has been seen growing (``min_updates`` different lengths, at least ``min_chars`` long), press Stop;
    watch the run end, then 1.5 s more. ``while_streaming`` runs just before Stop (the screenshot)."""
    page.locator("#clear").click()
    page.wait_for_function(f"() => ({TABLE_JS})().length === 0 && "
                           "document.querySelectorAll('#col-0-chat [data-testid=\"bot\"]').length === 0",
                           timeout=30_000, polling=100)
    set_parameter(page, "temperature", temperature)
    set_parameter(page, "max-tokens", max_tokens)
    page.evaluate(SAMPLER_JS, count)
    submit_prompt(page, prompt)
    # a column that ends before the others have caught up (its answer was short) ends the wait, and the step
    outcome = page.wait_for_function(
        """([count, minUpdates, minChars]) => {
             const samples = window.__ppSamples;
             const now = samples[samples.length - 1].cols;
             if (now.some((c) => /done|stopped|error/.test(c.status))) return {ended: now.map((c) => c.status)};
             const grown = Array.from({length: count}, (_, i) => new Set(samples
                 .filter((s) => s.cols.every((c) => c.status.includes("streaming")) && s.cols[i].len > 0)
                 .map((s) => s.cols[i].len)).size >= minUpdates && now[i].len >= minChars);
             return grown.every(Boolean) ? {ended: null} : null;
           }""",
        arg=[count, min_updates, min_chars], timeout=start_timeout_s * 1000, polling=100).json_value()
    samples = page.evaluate("window.__ppSamples")
    if outcome["ended"] is not None:
        page.locator("#stop").click()  # leave the page settled: stop the others, let the run end
        wait_statuses(page, count, ("stopped", "done", "error"), 30)
        wait_table_rows(page, count)
        raise ColumnEndedEarly(f"a column ended before every column was seen streaming: {outcome['ended']}")
    if while_streaming is not None:
        while_streaming(page)
    clicked = time.monotonic()
    page.locator("#stop").click()
    wait_statuses(page, count, ("stopped", "done", "error"), 30)
    stop_to_stopped = time.monotonic() - clicked
    first_seen = (answer_texts(page, count), statuses(page, count))
    # the run's last update fills the (cleared) table; after it nothing may change any more
    wait_table_rows(page, count)
    ended = (answer_texts(page, count), statuses(page, count))
    page.wait_for_timeout(1500)  # an observation window, not a wait for readiness: nothing may change in it
    later = (answer_texts(page, count), statuses(page, count))
    return Stopped(samples, first_seen[0], first_seen[1], ended[0], ended[1], later[0], later[1], stop_to_stopped,
                   table_rows(page))


def table_headers(page: Any) -> list[dict[str, Any]]:
    """Each results-table header: its text and its box's height."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('#results thead th')).map((th) => (
      {text: th.innerText.trim(), height: th.getBoundingClientRect().height}))""")


def layout(page: Any) -> dict[str, Any]:
    """Where the two columns sit, and how wide the document is, at the page's current viewport."""
    return page.evaluate("""() => {
      const box = (sel) => { const r = document.querySelector(sel).getBoundingClientRect();
                             return {x: r.x, y: r.y + window.scrollY, width: r.width, height: r.height}; };
      return {col0: box('#col-0'), col1: box('#col-1'), prompt: box('#prompt'),
              scrollWidth: document.scrollingElement.scrollWidth, viewport: window.innerWidth};
    }""")


BENCH_TABLE_JS = TABLE_JS.replace("#results", "#bench-stats")
#: how each chart's Vega view drew: its marks, and the width it had
CHART_JS = """(id) => {
  const root = document.querySelector(`#${id}`);
  if (!root || root.offsetParent === null) return null;
  const svg = root.querySelector('svg.marks'), canvas = root.querySelector('canvas.marks');
  const drawn = svg || canvas;
  if (!drawn) return null;
  return {width: drawn.getBoundingClientRect().width, box: root.getBoundingClientRect().width,
          text: svg ? svg.textContent : ''};
}"""


@dataclass
class Benchmarked:
    statuses: list[str]
    summary: str
    stats: list[list[str]]
    charts: dict[str, dict[str, Any]]
    json_path: Path


def benchmark(page: Any, url: str, download_dir: Path, targets: tuple[str, ...] = BUNDLED, repeat: int = 3,
              max_tokens: int = 16, prompt: str = "Name a colour.", timeout_s: float = 600) -> Benchmarked:
    """Open the page, pick the targets, set Repeat, run at temperature 0; wait for the statistics and
    both charts; download the JSON."""
    labels = target_labels()
    open_app(page, url)
    for column, target in enumerate(targets):
        pick_target(page, column, labels[target])
    set_parameter(page, "temperature", 0)
    set_parameter(page, "max-tokens", max_tokens)
    set_parameter(page, "repeat", repeat)
    submit_prompt(page, prompt)
    page.wait_for_function(f"() => ({STATUS_JS})([{len(targets)}, ['done', 'stopped', 'error']]) && "
                           f"document.querySelector('#col-0-status').innerText.includes('run {repeat} of {repeat}')",
                           timeout=timeout_s * 1000, polling=200)
    page.locator("#bench-stats").wait_for(state="visible", timeout=60_000)
    page.wait_for_function(f"() => ({BENCH_TABLE_JS})().length >= {len(targets)}", timeout=30_000, polling=100)
    charts = {}
    for chart in ("chart-ttft", "chart-decode"):
        page.wait_for_function(f"() => ({CHART_JS})('{chart}') !== null", timeout=30_000, polling=100)
        charts[chart] = page.evaluate(CHART_JS, chart)
    with page.expect_download(timeout=30_000) as info:
        page.locator("#download-json").click()
    download = info.value
    json_path = download_dir / (download.suggested_filename or "bench.json")
    download.save_as(json_path)
    summary = page.locator("#bench-summary").inner_text()
    return Benchmarked(statuses(page, len(targets)), summary, page.evaluate(BENCH_TABLE_JS), charts, json_path)


#: a copy of every event stream the page reads (Gradio's client reads its SSE through fetch)
WIRE_TAP_JS = """(() => {
  window.__ppWire = [];
  const fetched = window.fetch;
  window.fetch = async (...args) => {
    const response = await fetched(...args);
    const url = String(args[0] && args[0].url ? args[0].url : args[0]);
    if (!url.includes('/queue/data') || !response.body) return response;
    const [mine, copy] = response.body.tee();
    (async () => {
      const reader = copy.getReader();
      const text = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        window.__ppWire.push(text.decode(value, { stream: true }));
      }
    })();
    return new Response(mine, { status: response.status, statusText: response.statusText, headers: response.headers });
  };
})();"""


#: every change of column 0's live box, stamped by the page's own clock each animation frame
LIVE_SAMPLER_JS = """() => {
  window.__ppLive = [];
  let last = -1;
  const step = () => {
    const live = document.querySelector('#col-0-live textarea');
    const shown = live && live.value !== '' && live.offsetParent !== null;
    const len = shown ? live.value.length : -1;
    if (len !== last) { window.__ppLive.push([performance.now(), len]); last = len; }
    window.__ppLiveFrame = requestAnimationFrame(step);
  };
  step();
}"""


def open_history(page: Any) -> None:
    """The *History* tab (its content is built when it is first shown)."""
    page.get_by_role("tab", name="History").click()
    page.locator("#run-id input, #run-id textarea").first.wait_for(state="visible", timeout=30_000)


def replay_last_run(page: Any, timeout_s: float = 120) -> tuple[str, list[list[float]], float]:
    """Open *History*, replay the last run (its id is filled in) at 1×; the run id, column 0's
    live-box lengths over the page's time while the replay streamed, and that time just before the click."""
    open_history(page)
    box = page.locator("#run-id input, #run-id textarea").first
    page.wait_for_function("(sel) => document.querySelector(sel)?.value.length > 10",
                           arg="#run-id input, #run-id textarea", timeout=30_000)
    run_id = box.input_value()
    page.evaluate(LIVE_SAMPLER_JS)
    clicked = page.evaluate("() => performance.now()")
    page.locator("#replay").click()
    page.wait_for_function("() => document.querySelector('#col-0-status').innerText.includes('replay of') && "
                           "document.querySelector('#col-0-status').innerText.includes('done')",
                           timeout=timeout_s * 1000, polling=100)
    samples = page.evaluate("() => { cancelAnimationFrame(window.__ppLiveFrame); return window.__ppLive; }")
    return run_id, samples, clicked
