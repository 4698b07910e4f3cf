"""The Gradio Blocks UI. Gradio is imported only here; formatting lives in ui_format."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import math
import sys
from secrets import token_urlsafe
from contextlib import aclosing
from pathlib import Path
from typing import Any, AsyncIterator

import gradio as gr
from starlette.middleware import Middleware

from playground import exports, measure_process, public, records, replay, secrets, ui_arena, ui_stream, warmup
from playground.backends import make_backend
from playground.catalog import Catalog, Target, load_catalog
from playground.clock import monitor_this_loop
from playground.images import MAX_FILE_BYTES, ImageError, PreparedImage, from_multimodal
from playground.repeats import STAT_COLUMNS
from playground.report import TABLE_COLUMNS
from playground.request import (MAX_NEW_TOKENS_LIMIT, MAX_PROMPT_CHARS, ChatRequest, InputError, Message,
                                build_messages, fit_history, make_params)
from playground.runner import Job
from playground.settings import (MAX_COLUMNS, PROGRESS_POLL_S, QUEUE_POLL_S, Settings, SettingsError, deck_file,
                                 from_env, problems, session_capacity)
from playground.ui_errors import Refused
from playground.ui_format import Turn, key_availability, ordered_choices

log = logging.getLogger(__name__)

EXAMPLES = [
    "Explain in three sentences why the sky is blue.",
    "Write a haiku about debugging at 2 a.m.",
    "Explique en deux phrases ce qu'est un petit modèle de langage. Puis traduis ta réponse en español y en 中文.",
    "A bat and a ball cost $1.10 in total. The bat costs $1.00 more than the ball. How much is the ball? Think step by step.",
    "Write a Python function that checks whether a string is a palindrome, with two tests.",
]
CSS = """
.pp-col { min-width: 300px; }
/* presenter mode (?presenter=1): larger type for the back of the room */
body.pp-presenter .gradio-container { font-size: 1.3em; }
body.pp-presenter .pp-live textarea, body.pp-presenter #deck-step { font-size: 1.4em; }
/* the settings folded away until the presenter asks for them */
body:not(.pp-presenter) #presenter-settings { display: none !important; }
body.pp-folded #parameters, body.pp-folded #keys, body.pp-folded #examples, body.pp-folded #n-columns,
body.pp-folded #quota { display: none !important; }
.pp-status { font-size: 0.85em; min-height: 3.2em; }
/* a column's live box shows only while an answer streams in it (its value is empty otherwise) */
.pp-live:has(textarea:placeholder-shown) { display: none !important; }
/* on a phone the results table scrolls sideways instead of crushing a header to a letter a line */
#results th, #bench-stats th { min-width: 6em; }
#results th:first-child, #bench-stats th:first-child { min-width: 11em; }
"""
def _remember_matplotlib_is_absent() -> None:
    """Gradio wraps every call, so every frame of a stream, in ``import matplotlib`` (twice) to pick a
    plotting backend. Where matplotlib is not installed, each attempt searches the whole of sys.path
    again: a fifth of Gradio's loop time while a run streams. Record its absence once: the import then
    fails at once, as it would have anyway."""
    if "matplotlib" not in sys.modules and importlib.util.find_spec("matplotlib") is None:
        sys.modules["matplotlib"] = None  # type: ignore[assignment]


#: the *Your keys* form: the variable each field stands in for, its label, and whether it is a secret
KEY_FIELDS: list[tuple[str, str, bool]] = [
    ("GITHUB_TOKEN", "GitHub token (GitHub Models)", True),
    ("NVIDIA_API_KEY", "NVIDIA API key (NIM)", True),
    ("AZURE_AI_ENDPOINT", "Azure AI Foundry endpoint (https://RESOURCE.services.ai.azure.com/openai/v1)", False),
    ("AZURE_AI_API_KEY", "Azure AI Foundry key", True),
    ("PLAYGROUND_USER_BASE_URL", "Your OpenAI-compatible endpoint: base URL (https://…/v1)", False),
    ("PLAYGROUND_USER_MODEL", "Your endpoint: model name", False),
    ("PLAYGROUND_USER_API_KEY", "Your endpoint: key", True),
]


SECRET_FIELDS = frozenset(name for name, _, secret in KEY_FIELDS if secret)
_typed_keys: dict[str, set[str]] = {}  # per session: the keys it typed, forgotten when its page closes


def _credentials(values: list[str | None] | tuple[str | None, ...], policy: public.Policy,
                 request: gr.Request | None = None) -> secrets.Credentials | None:
    from playground import urls

    form = {name: value for (name, _, _), value in zip(KEY_FIELDS, values)}
    credentials = secrets.from_form(form, policy.public and not urls.private_allowed(), SECRET_FIELDS)
    if credentials is not None and request is not None:
        _typed_keys.setdefault(_session(request), set()).update(credentials.secrets())
    return credentials


def _forget_typed_keys(request: gr.Request) -> None:
    for key in _typed_keys.pop(_session(request), set()):
        secrets.forget(key)


def _to_remember(remember: bool, *values: str | None) -> dict[str, str]:
    """What this browser keeps: the form, only while *Remember* is ticked. Unticked, it keeps ``{}``
    (the browser skips storing a null, which would leave the old keys there)."""
    if not remember:
        return {}
    return {name: value for (name, _, _), value in zip(KEY_FIELDS, values) if value}


def _remembered(saved: Any) -> list[Any]:
    """The form as this browser remembered it, or as it is when it remembers nothing."""
    if not isinstance(saved, dict) or not saved:
        return [gr.skip()] * (len(KEY_FIELDS) + 1)
    return [True, *(str(saved.get(name) or "")[:2000] for name, _, _ in KEY_FIELDS)]


def _on_load(saved: Any, mark: dict[str, str]) -> list[Any]:
    """The remembered form, and the session's token, kept in its state and shown to the page."""
    mark["id"] = token_urlsafe(12)  # the State's own dict: Gradio keeps this object for the session
    return [*_remembered(saved), mark["id"]]


def _lost_state(mark: dict[str, str], shown: str | None) -> str | None:
    """What to tell a page whose session state the server dropped (more sessions than
    PLAYGROUND_SESSIONS since it was last used): its chats still show earlier turns the models
    will not get. Takes the page's token again, so it is said once."""
    if not shown or mark.get("id") == shown:
        return None
    mark["id"] = shown
    return (f"This conversation's earlier turns are no longer on the server (it restarted, or it keeps "
            f"only the {session_capacity()} most recently active sessions): this answer did not see them.")


def _column_stopper(index: int) -> Any:
    def stop_this_column(request: gr.Request) -> None:
        ui_stream.stop_column(_session(request), index)

    return stop_this_column


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


def sees_everyone(policy: public.Policy, scope_value: str | None, owner_value: str | None) -> bool:
    """Everyone's recorded runs: locally the owner's machine; in public mode only with the owner key."""
    if not policy.public or secrets.is_owner(owner_value):
        return True
    if scope_value == EVERYONE:
        raise Refused("Everyone's runs: in public mode only the owner sees them (type the owner key).")
    return False


def recorded_run(policy: public.Policy, run_id_value: str | None, owner_value: str | None,
                 session: str) -> dict[str, Any]:
    """A recorded run by its id; in public mode only one of this session's, unless the owner asks (a
    share link, which opens another's run, goes through ``open_shared``)."""
    if not run_id_value or not str(run_id_value).strip():
        raise Refused("Run id: pick a run in the history first.")
    mine = None if sees_everyone(policy, None, owner_value) else session
    try:
        return records.load(str(run_id_value).strip(), mine)
    except records.RecordError as exc:
        raise Refused(str(exc)) from None


def _choices(catalog: Catalog, credentials: secrets.Credentials | None = None,
             policy: public.Policy | None = None) -> list[tuple[str, str]]:
    """Picker entries; each keyed target says whose key it will use."""
    listed = []
    for target in catalog.targets:
        available = make_backend(target).availability()
        listed.append((target, key_availability(target, available, credentials, bool(policy and policy.public))))
    return ordered_choices(listed)


def _initial_targets(catalog: Catalog, settings: Settings, choices: list[tuple[str, str]]) -> list[str]:
    wanted = [t for t in (settings.default_targets or catalog.defaults) if t in catalog.ids]
    for _, target_id in choices:  # fill the remaining columns with the first runnable targets
        if len(wanted) >= MAX_COLUMNS:
            break
        if target_id not in wanted:
            wanted.append(target_id)
    return wanted[:MAX_COLUMNS]


def _seed(value: str | float | None) -> int | None:
    text = "" if value is None else str(value).strip()
    if not text:
        return None
    try:
        return int(float(text)) if float(text).is_integer() else int(text)
    except ValueError:
        raise InputError(f"seed: must be a whole number or blank (got {text!r})") from None


def _validate(catalog: Catalog, prompt: str, system: str, temperature: float, top_p: float,
              max_tokens: float, seed: str | float | None, target_ids: list[str]) -> tuple[tuple[Message, ...], Any]:
    try:
        # max_tokens as it came: the model's checks refuse 1.5, NaN and infinity by name
        params = make_params(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=_seed(seed))
        build_messages(prompt, system)
    except InputError as exc:
        raise Refused(str(exc)) from None
    for target_id in target_ids:
        if not target_id:
            raise Refused("Pick a target in every visible column.")
        if target_id not in catalog.ids:
            raise Refused(f"Unknown target {target_id!r}: pick one from the list.")
    return (), params


COLUMN_MIN_PX = 260
PRESENTER_JS = """() => {
  if (!['1', 'true', 'yes'].includes(new URLSearchParams(location.search).get('presenter') || '')) return;
  document.body.classList.add('pp-presenter', 'pp-folded');
  // a clicker sends PageDown / PageUp; arrows too, outside a text field
  document.addEventListener('keydown', (event) => {
    const typing = event.target.closest && event.target.closest('input, textarea, [contenteditable="true"]');
    if (typing || event.altKey || event.ctrlKey || event.metaKey) return;
    const id = { PageDown: 'deck-next', ArrowRight: 'deck-next', PageUp: 'deck-prev', ArrowLeft: 'deck-prev' }[event.key];
    const button = id && document.getElementById(id);
    if (button && button.offsetParent !== null) { event.preventDefault(); button.click(); }
  });
}"""
SETTINGS_TOGGLE_JS = "() => { document.body.classList.toggle('pp-folded'); }"


def _deck_steps(path: str | None) -> list[Any]:
    """The deck's steps; a bad deck stopped the app at start-up (settings.problems), so here it loads."""
    from playground import deck

    if not path:
        return []
    try:
        return deck.load(path)
    except deck.DeckError:
        return []


MAX_REPEAT, MAX_WARMUP = 20, 3
HISTORY_COLUMNS = ["id", "when", "prompt", "targets"]
THIS_SESSION, EVERYONE = "this page's", "everyone's"
SCOPES = (THIS_SESSION, EVERYONE)
SPEEDS = replay.SPEEDS
FAIR_CHOICES = ["auto", "on", "off"]


def _whole(value: Any, name: str, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer() or not low <= number <= high:
        raise Refused(f"{name}: must be a whole number from {low} to {high} (got {value!r})")
    return int(number)


def _benchmark(repeat: Any, warmup: Any, fair: Any, objectives: Any, targets: list[Target]) -> ui_stream.Benchmark | None:
    """Benchmark mode's settings, checked; None for a single run (Repeat 1, no warm-up)."""
    from playground import repeats, stats

    count = _whole(1 if repeat is None else repeat, "Repeat", 1, MAX_REPEAT)
    warm = _whole(0 if warmup is None else warmup, "Warm-up runs", 0, MAX_WARMUP)
    mode = fair or "auto"
    if mode not in FAIR_CHOICES:
        raise Refused(f"Fair mode: must be one of {', '.join(FAIR_CHOICES)} (got {fair!r})")
    try:
        wanted = stats.Objectives.parse(str(objectives)) if objectives and str(objectives).strip() else None
    except ValueError as exc:
        raise Refused(str(exc)) from None
    if count == 1 and warm == 0:
        return None
    on = repeats.fair_by_default(targets, count, warm) if mode == "auto" else mode == "on"
    return ui_stream.Benchmark(count, warm, on, wanted)


def _column_count(value: Any) -> int:
    """The API's column count, checked (7 would index past the last column, -1 drop one)."""
    return _whole(value, "columns", 1, MAX_COLUMNS)


def _uploaded_only(value: Any) -> Any:
    """With preprocess=False Gradio does not vet file paths, so accept only its own uploads."""
    from gradio.utils import get_upload_folder

    if not isinstance(value, dict):
        return value
    root = Path(get_upload_folder()).resolve()
    for item in value.get("files") or []:
        path = item.get("path") if isinstance(item, dict) else item
        if not path or not Path(path).resolve().is_relative_to(root):
            raise Refused("Attach images by uploading or pasting them into the prompt box.")
    return value


async def _read_prompt(value: Any) -> tuple[str, tuple[PreparedImage, ...]]:
    try:
        text, images = await asyncio.to_thread(from_multimodal, _uploaded_only(value))
    except ImageError as exc:
        raise Refused(str(exc)) from None
    for image in images:
        for note in image.notes:
            gr.Warning(f"{image.name}: {note}")
    return text, images


def _address(request: gr.Request | None, policy: public.Policy) -> str:
    """The client's address; behind a Space's proxy the last X-Forwarded-For entry (set by the proxy)."""
    if request is None:
        return "unknown"
    forwarded = request.headers.get("x-forwarded-for", "") if policy.trust_forwarded_for else ""
    client = getattr(request, "client", None)
    # the right-most entry is the one the trusted proxy added; those before it the client may have sent
    return forwarded.split(",")[-1].strip() or getattr(client, "host", None) or "unknown"


def build_ui(catalog: Catalog | None = None, settings: Settings | None = None,
             policy: public.Policy | None = None) -> gr.Blocks:
    settings = settings or from_env()
    policy = policy or public.from_env()
    quota = public.Quota(policy.rate) if policy.public and policy.rate else None
    _remember_matplotlib_is_absent()
    full_catalog = catalog or load_catalog(settings.catalog)
    for name, ids in (("PLAYGROUND_DEFAULT_TARGETS", settings.default_targets), ("PLAYGROUND_PUBLIC_TARGETS", policy.targets)):
        unknown = sorted(set(ids or ()) - set(full_catalog.ids))
        if unknown:  # a typo would start an app without the targets meant (in public mode, with none)
            raise SettingsError(f"{name}: unknown target {unknown[0]!r} (`python -m playground targets` lists them)")
    catalog = policy.offered(full_catalog)  # what the pickers show; the API is refused the rest by name
    choices = _choices(catalog)
    initial = _initial_targets(catalog, settings, choices)
    n_initial = settings.columns or max(1, min(len(settings.default_targets or catalog.defaults) or 2, MAX_COLUMNS))

    with gr.Blocks(title="Phi Playground", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# Phi Playground\nOne prompt, several models and backends, streamed side by side "
                    "with honest numbers. Offline by default: the bundled SmolLM2-135M runs on every local backend installed.")
        gr.Markdown(policy.describe(), elem_id="mode")
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Compare", id="compare", elem_id="tab-compare") as compare_tab:
                histories = gr.State([[] for _ in range(MAX_COLUMNS)])
                # the same token in the session's state and in the page: a page whose token the server
                # no longer has lost its session's state to the cap (PLAYGROUND_SESSIONS)
                session_mark = gr.State({})
                page_mark = gr.Textbox(visible=False, elem_id="session-mark")
                n_cols = gr.Slider(1, MAX_COLUMNS, value=n_initial, step=1, label="Columns", elem_id="n-columns")
                slots, pickers, chats, lives, statuses, column_stops, codes = [], [], [], [], [], [], []
                with gr.Row(equal_height=False, elem_id="columns"):
                    for i in range(MAX_COLUMNS):
                        # four fit side by side in a 1280-pixel window (at 300, the fourth took a row of its own)
                        with gr.Column(visible=i < n_initial, min_width=COLUMN_MIN_PX, elem_id=f"col-{i}",
                                       elem_classes=["pp-col"]) as slot:
                            pickers.append(gr.Dropdown(choices=choices, value=initial[i] if i < len(initial) else None,
                                                       label=f"Target {i + 1}", elem_id=f"col-{i}-target"))
                            chats.append(gr.Chatbot(height=380, elem_id=f"col-{i}-chat", show_label=False,
                                                    feedback_options=None, buttons=["copy"]))
                            # The answer streams here as plain text, and moves into the chat, rendered, when done.
                            # A fixed height (lines == max_lines): a growing textbox measures itself on every change
                            # (two forced layouts per box per frame), and moves the chat and the page with it.
                            # Shown only while it holds text (CSS): a visibility change per run would be a prop
                            # update, and Gradio rebuilds the component's config and JSON schema for each one
                            lives.append(gr.Textbox("", placeholder=" ", interactive=False, show_label=False, lines=8,
                                                    max_lines=8, autoscroll=True, elem_id=f"col-{i}-live",
                                                    elem_classes=["pp-live"]))
                            statuses.append(gr.Markdown("", elem_id=f"col-{i}-status", elem_classes=["pp-status"]))
                            column_stops.append(gr.Button("■ Stop this column", size="sm", elem_id=f"col-{i}-stop"))
                            with gr.Accordion("Code", open=False, elem_id=f"col-{i}-code-box"):
                                codes.append(gr.Code(language="python", interactive=False, show_label=False,
                                                     elem_id=f"col-{i}-code"))
                        slots.append(slot)
                with gr.Group(visible=False, elem_id="deck") as deck_box:
                    deck_line = gr.Markdown("", elem_id="deck-step")
                    with gr.Row():
                        deck_prev = gr.Button("◀ Previous", size="sm", elem_id="deck-prev")
                        deck_next = gr.Button("Next ▶", size="sm", elem_id="deck-next")
                        deck_replay = gr.Button("Replay this step's recorded run", size="sm", visible=False,
                                                elem_id="deck-replay")
                deck_at = gr.State(0)
                prompt = gr.MultimodalTextbox(
                    lines=1, max_lines=12, label="Prompt", file_types=["image"], file_count="multiple",
                    sources=["upload"], submit_btn=False, elem_id="prompt", max_plain_text_length=MAX_PROMPT_CHARS,
                    placeholder="Ask something; attach or paste images for vision targets. Enter runs, Shift+Enter adds a line.")
                with gr.Row():
                    run_btn = gr.Button("Run", variant="primary", elem_id="run")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                    clear_btn = gr.Button("Clear", elem_id="clear")
                    settings_btn = gr.Button("⚙ Settings", elem_id="presenter-settings", size="sm")
                quota_line = gr.Markdown("", elem_id="quota", visible=quota is not None)
                with gr.Accordion("Parameters", open=False, elem_id="parameters"):
                    system = gr.Textbox(label="System prompt", lines=2, elem_id="system")
                    with gr.Row():
                        temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)", elem_id="temperature")
                        top_p = gr.Slider(0.05, 1, value=1.0, step=0.05, label="top_p", elem_id="top-p")
                        max_tokens = gr.Slider(1, MAX_NEW_TOKENS_LIMIT, value=256, step=1, label="Max new tokens", elem_id="max-tokens")
                        # a Textbox, since a blank gr.Number reaches the server as 0 and would fix every seed
                        seed = gr.Textbox(value="", label="Seed (blank = random)", elem_id="seed", max_length=12)
                    gr.Markdown("**Benchmark mode**: repeat the run and get statistics and charts. The columns still run at "
                                "once; each runs its warm-up runs (not counted), then its measured runs, one after another.")
                    with gr.Row():
                        repeat = gr.Slider(1, MAX_REPEAT, value=1, step=1, label="Repeat (measured runs)", elem_id="repeat")
                        warmups = gr.Slider(0, MAX_WARMUP, value=0, step=1, label="Warm-up runs", elem_id="warmup")
                        fair = gr.Radio(FAIR_CHOICES, value="auto", elem_id="fair",
                                        label="Fair mode: local targets take turns for the CPU (auto: with two or more)")
                        goodput = gr.Textbox(value="", label="Goodput objectives (e.g. ttft:500, tps:20)", elem_id="goodput",
                                             max_length=60)
                with gr.Accordion("Your keys", open=False, elem_id="keys"):
                    gr.Markdown("Keys typed here are used for your runs only, in this browser session: never stored on "
                                "the server beyond it, never logged, never in a download. A URL you type is used only with "
                                "your own key" + (", and must reach the public internet." if policy.public else "."))
                    key_boxes = [gr.Textbox(label=label, type="password" if secret else "text", max_length=2000,
                                            elem_id=f"key-{name.lower().replace('_', '-')}")
                                 for name, label, secret in KEY_FIELDS]
                    remember = gr.Checkbox(False, label="Remember these in this browser (encrypted in its local storage; "
                                           "unticking forgets them)", elem_id="remember-keys")
                # the storage's secret is drawn at each start of the app: after a restart nothing stored can be read
                remembered = gr.BrowserState(None, storage_key="phi-playground-keys")
                session_keys = gr.State(None)  # the API's keys (/keys), server-side for this session only
                with gr.Column(elem_id="examples"):
                    gr.Examples([{"text": e, "files": []} for e in EXAMPLES], inputs=[prompt], label="Examples")
                table = gr.Dataframe(headers=TABLE_COLUMNS, label="Results", interactive=False, elem_id="results", wrap=True)
                # "hidden": in the page, out of sight, so their code is fetched with the page, not when a run ends
                bench_summary = gr.Markdown("", visible="hidden", elem_id="bench-summary")
                bench_table = gr.Dataframe(headers=STAT_COLUMNS, label="Benchmark statistics", interactive=False,
                                           elem_id="bench-stats", wrap=True, visible="hidden")
                with gr.Row(elem_id="bench-charts"):
                    ttft_chart = gr.Plot(label="TTFT", elem_id="chart-ttft", visible="hidden", show_label=False,
                                         min_width=300)
                    decode_chart = gr.Plot(label="Decode rate", elem_id="chart-decode", visible="hidden", show_label=False,
                                           min_width=300)
                with gr.Row():
                    csv_btn = gr.DownloadButton("Download CSV", visible="hidden", elem_id="download-csv")
                    json_btn = gr.DownloadButton("Download JSON", visible="hidden", elem_id="download-json")
                replay_doc = gr.State(None)
            with gr.Tab("History", id="history", elem_id="tab-history") as history_tab:
                recorded_line = gr.Markdown("Every finished run is recorded here: replay one at its recorded pace, "
                                            "with no model, key or network, or export it to replay elsewhere.",
                                            elem_id="recorded")
                with gr.Row():
                    search = gr.Textbox(label="Search prompts and targets", elem_id="history-search", max_length=200)
                    scope = gr.Radio(list(SCOPES), value=THIS_SESSION if policy.public else EVERYONE, label="Runs", elem_id="history-scope",
                                     visible=not policy.public or secrets.owner_key() is not None)
                    owner_box = gr.Textbox(label="Owner key (PLAYGROUND_OWNER_KEY), for everyone's runs", type="password",
                                           max_length=200, elem_id="owner-key",
                                           visible=policy.public and secrets.owner_key() is not None)
                    refresh_btn = gr.Button("Refresh", size="sm", elem_id="history-refresh")
                history_table = gr.Dataframe(headers=HISTORY_COLUMNS, interactive=False, elem_id="history-runs",
                                             wrap=True)
                with gr.Row():
                    run_id = gr.Textbox(label="Run id (pick a row)", elem_id="run-id", max_length=64)
                    speed = gr.Radio(list(SPEEDS), value="1×", label="Replay pace", elem_id="replay-speed")
                with gr.Row():
                    open_btn = gr.Button("Open as it ended", elem_id="open-run")
                    replay_btn = gr.Button("Replay", elem_id="replay")
                    export_btn = gr.Button("Export run", elem_id="export-run")
                    share_btn = gr.Button("Share", elem_id="share-run")
                    export_file = gr.DownloadButton("Download the run file", visible="hidden", elem_id="export-file")
                    import_btn = gr.UploadButton("Import a run file and replay it", file_types=[".json"],
                                                 elem_id="import-run")
                share_line = gr.Markdown("", elem_id="share-link")
            arena_room, board_room, board_timer = ui_arena.build(catalog, policy, quota, _session,
                                                                 lambda request: _quota_keys(request))
        empty_table = table.postprocess(None).model_dump()

        async def plan_run(prompt_value: Any, system_text: str, temp: float, p: float, max_new: float,
                           seed_value: str | None, columns: float, hist: list[list[Turn]], chosen: list[str | None],
                           request: gr.Request, credentials: secrets.Credentials | None = None,
                           bench: tuple[Any, Any, Any, Any] = (1, 0, "auto", ""), notices: tuple[str, ...] = ()
                           ) -> ui_stream.Plan:
            monitor_this_loop("gradio")  # logs any stall of Gradio's own loop over 100 ms
            target_ids = list(chosen[:_column_count(columns)])
            prompt_text, images = await _read_prompt(prompt_value)
            _, params = _validate(full_catalog, prompt_text, system_text, temp, p, max_new, seed_value, target_ids)
            benchmark = _benchmark(*bench, [full_catalog.get(t) for t in target_ids])
            for target_id in target_ids:
                if (refused := policy.refusal(full_catalog.get(target_id))) is not None:
                    raise Refused(refused)
            if (refused := public.same_target_refusal(policy, target_ids)) is not None:
                raise Refused(refused)
            if quota is not None:  # last: a run refused for its input costs nothing
                cost = benchmark.repeat + benchmark.warmup if benchmark is not None else 1  # each repeat is a run
                wait = quota.take(_quota_keys(request), cost)
                if wait == math.inf:
                    raise Refused(f"Benchmark: {cost} runs a column is more than this Space allows "
                                   f"({quota.rate.describe()} per visitor): lower Repeat or Warm-up runs.")
                if wait is not None:
                    raise Refused(quota.refusal(wait))
            jobs = []
            for i, target_id in enumerate(target_ids):
                target = full_catalog.get(target_id)
                past, note = fit_history([(t.sent_user or t.user, t.assistant) for t in hist[i] if t.ok],
                                         prompt_text, system_text, params.max_tokens, target.context_length)
                # only a target that can use them gets a visitor's keys (never a model process)
                mine = credentials if target.backend == "openai" else None
                jobs.append(Job(target, ChatRequest(build_messages(prompt_text, system_text, past, images), params,
                                                    credentials=mine),
                                notices=notices + ((note,) if note else ())))
            shown_prompt = prompt_text + (f"\n\n🖼 {', '.join(i.name for i in images)}" if images else "")
            return ui_stream.Plan(_session(request), prompt_text, shown_prompt, system_text, params, images, jobs, hist,
                                  benchmark)

        def _quota_keys(request: gr.Request | None) -> list[str]:
            return [f"session:{_session(request)}", f"address:{_address(request, policy)}"]

        def quota_status(request: gr.Request) -> str:
            return quota.status(_quota_keys(request)) if quota is not None else ""

        def stop(request: gr.Request) -> None:
            ui_stream.stop(_session(request))

        def stop_one(column: float | None, request: gr.Request) -> None:
            """Stop one column of this session's run (0 is the first); the others finish."""
            whole = isinstance(column, (int, float)) and math.isfinite(column) and float(column).is_integer()
            if not whole or not 0 <= column < MAX_COLUMNS:  # type: ignore[operator]  # 1.5 is no column
                raise Refused(f"column: must be a whole number from 0 to {MAX_COLUMNS - 1} (got {column!r})")
            ui_stream.stop_column(_session(request), int(column))  # type: ignore[arg-type]

        def clear(request: gr.Request) -> list[Any]:
            ui_stream.clear(_session(request))  # a run still streaming stops, and shows nothing more
            empty = [[] for _ in range(MAX_COLUMNS)]
            return [[] for _ in range(MAX_COLUMNS)] + [""] * MAX_COLUMNS + [
                None, gr.DownloadButton(visible="hidden"), gr.DownloadButton(visible="hidden"), empty]

        def clear_page(request: gr.Request) -> list[Any]:
            """``clear``, and the page's own parts: the live boxes, and no results to show after the run."""
            return clear(request) + [""] * MAX_COLUMNS + [None]

        def show_columns(count: float) -> list[Any]:
            return [gr.Column(visible=i < int(count)) for i in range(MAX_COLUMNS)]

        def refresh_choices(*typed: str | None) -> list[Any]:
            fresh = _choices(catalog, _credentials(typed, policy), policy)
            return [gr.Dropdown(choices=fresh) for _ in range(MAX_COLUMNS)]

        def set_keys(k0: str, k1: str, k2: str, k3: str, k4: str, k5: str, k6: str,  # KEY_FIELDS
                     request: gr.Request) -> tuple[secrets.Credentials | None, str]:
            """The API's way to bring your own keys: one value per field of the form, in its order."""
            credentials = _credentials((k0, k1, k2, k3, k4, k5, k6), policy, request)
            return credentials, f"keys set for this session: {credentials!r}" if credentials else "no keys set"

        async def run_from_page(prompt_value: Any, system_text: str, temp: float, p: float, max_new: float,
                                seed_value: str | None, columns: float, hist: list[list[Turn]], targets: str,
                                k0: str, k1: str, k2: str, k3: str, k4: str, k5: str, k6: str,  # KEY_FIELDS
                                repeats: float, warmup_runs: float, fair_mode: str, objectives: str,
                                mark: dict[str, str], shown_mark: str, request: gr.Request
                                ) -> AsyncIterator[list[Any]]:
            typed = (k0, k1, k2, k3, k4, k5, k6)
            lost = _lost_state(mark, shown_mark)
            plan = await plan_run(prompt_value, system_text, temp, p, max_new, seed_value, columns, hist,
                                  (targets or "").split("\n"), request, _credentials(typed, policy, request),
                                  (repeats, warmup_runs, fair_mode, objectives), (lost,) if lost else ())
            if lost:
                gr.Warning(lost)
            async with aclosing(ui_stream.frames(plan, table, csv_btn)) as stream:
                async for values in ui_stream.page_values(plan, stream):
                    yield values

        async def run_from_api(prompt_value: Any, system_text: str, temp: float, p: float, max_new: float,
                               seed_value: str | None, columns: float, hist: list[list[Turn]],
                               t0: str, t1: str, t2: str, t3: str, t4: str, t5: str,
                               keys: secrets.Credentials | None, request: gr.Request) -> AsyncIterator[list[Any]]:
            plan = await plan_run(prompt_value, system_text, temp, p, max_new, seed_value, columns, hist,
                                  [t0, t1, t2, t3, t4, t5], request, keys)
            async with aclosing(ui_stream.frames(plan, table, csv_btn)) as stream:
                async for values in ui_stream.api_values(plan, stream, empty_table):
                    yield values

        async def bench_from_api(prompt_value: Any, system_text: str, temp: float, p: float, max_new: float,
                                 seed_value: str | None, columns: float, hist: list[list[Turn]],
                                 t0: str, t1: str, t2: str, t3: str, t4: str, t5: str,
                                 repeats: float, warmup_runs: float, fair_mode: str, objectives: str,
                                 keys: secrets.Credentials | None, request: gr.Request) -> AsyncIterator[list[Any]]:
            """``/run`` in benchmark mode: its outputs, then the statistics table."""
            plan = await plan_run(prompt_value, system_text, temp, p, max_new, seed_value, columns, hist,
                                  [t0, t1, t2, t3, t4, t5], request, keys, (repeats, warmup_runs, fair_mode, objectives))
            async with aclosing(ui_stream.frames(plan, table, csv_btn)) as stream:
                async for values in ui_stream.api_values(plan, stream, empty_table, statistics=True):
                    yield values

        def history_rows(text: str | None, scope_value: str | None, owner_value: str | None,
                         request: gr.Request) -> Any:
            """This page's recorded runs, or everyone's (for the owner)."""
            everyone = scope_value == EVERYONE and sees_everyone(policy, scope_value, owner_value)
            try:
                rows = records.recent(None if everyone else _session(request), text or "")
            except records.RecordError as exc:
                raise Refused(str(exc)) from None
            return [[r["id"], replay.when({"recorded_at": r["created"]}), r["prompt"][:120], r["targets"]]
                    for r in rows]

        def history_after_run(text: str | None, scope_value: str | None, owner_value: str | None,
                              request: gr.Request) -> Any:
            """The history, refreshed after a run or as the tab is shown; a database that is off or
            unreadable already said so."""
            try:
                return history_rows(text, scope_value, owner_value, request)
            except gr.Error:
                return gr.skip()

        def after_run(results_value: tuple[Any, ...] | None, text: str | None, scope_value: str | None,
                      owner_value: str | None, request: gr.Request) -> list[Any]:
            """What follows a run on the page, in one event (each event is a request from the page, a turn
            of the queue and its messages): the results, the quota line, the history with the new run."""
            rows = history_after_run(text, scope_value, owner_value, request)
            history = rows if isinstance(rows, dict) else history_table.postprocess(rows).model_dump()  # a skip
            return [*ui_stream.results_values(results_value), quota_status(request), history]

        def pick_run(event: gr.SelectData) -> str:
            row = getattr(event, "row_value", None) or []
            return str(row[0]) if row else gr.skip()

        def _recorded(run_id_value: str | None, owner_value: str | None, request: gr.Request) -> dict[str, Any]:
            return recorded_run(policy, run_id_value, owner_value, _session(request))

        def share_link(run_id_value: str | None, owner_value: str | None, request: gr.Request) -> str:
            """A link that opens the run and replays it: the page's address and ``?run=ID``, nothing else."""
            _recorded(run_id_value, owner_value, request)
            page = (request.headers.get("referer") or "").split("?")[0].split("#")[0]
            link = f"{page}?run={str(run_id_value).strip()}"
            return f"Share this link: it opens the run and replays it (no key, no endpoint in it): [{link}]({link})"

        def open_shared(request: gr.Request) -> list[Any]:
            """A page opened with ``?run=ID``: that run, ready to replay; else nothing changes."""
            wanted = str(dict(request.query_params).get("run") or "").strip()[:64] if request else ""
            if not wanted:
                return [None] + [gr.skip()] * (2 + MAX_COLUMNS)
            try:
                document = records.load(wanted)
            except records.RecordError as exc:
                gr.Warning(f"Shared run: {exc}")
                return [None] + [gr.skip()] * (2 + MAX_COLUMNS)
            return [*_replay_setup(document), wanted]

        async def replay_shared(document: dict[str, Any] | None, pace: str, hist: list[list[Turn]],
                                request: gr.Request) -> AsyncIterator[list[Any]]:
            if document is None:  # an ordinary page load
                yield [gr.skip()] * (3 * MAX_COLUMNS + 2)
                return
            async with aclosing(replay_from_page(document, pace, hist, request)) as values_:
                async for values in values_:  # closing this closes the replay's frames (their `finally`) at once
                    yield values

        def load_recorded(run_id_value: str | None, owner_value: str | None, request: gr.Request) -> list[Any]:
            return [*_replay_setup(_recorded(run_id_value, owner_value, request)), gr.Tabs(selected="compare")]

        def load_import(file: Any) -> list[Any]:
            path = getattr(file, "name", None) or (file if isinstance(file, str) else None)
            if not path:
                raise Refused("Import: no file arrived.")
            try:
                document = records.read_export(Path(path))
            except records.RecordError as exc:
                raise Refused(f"Import: {exc}") from None
            return [*_replay_setup(document), gr.Tabs(selected="compare")]

        def _replay_setup(document: dict[str, Any]) -> list[Any]:
            """The document, the column count, and each picker showing the recorded target if it has one."""
            ids = [str(r.get("id")) for r in document["results"]]
            return [document, len(ids)] + [gr.update(value=ids[i]) if i < len(ids) and ids[i] in catalog.ids
                                           else gr.skip() for i in range(MAX_COLUMNS)]

        async def replay_from_page(document: dict[str, Any] | None, pace: str, hist: list[list[Turn]],
                                   request: gr.Request) -> AsyncIterator[list[Any]]:
            if document is None:
                raise Refused("Nothing to replay: pick a run or import a run file.")
            if pace not in SPEEDS:
                raise Refused(f"Replay pace: must be one of {', '.join(SPEEDS)} (got {pace!r})")
            try:
                params = make_params(**(document.get("parameters") or {}))
                messages = build_messages(document["prompt"], document.get("system") or "")
            except InputError as exc:
                raise Refused(f"this run's parameters cannot be replayed: {exc}") from None
            jobs = [Job(replay.display_target(r), ChatRequest(messages, params)) for r in document["results"]]
            # the run takes the columns, as it was: the conversation shown before it is not its history
            # (a follow-up would have sent both to the models)
            fresh: list[list[Turn]] = [[] for _ in hist]
            plan = ui_stream.Plan(_session(request), document["prompt"], document["prompt"], document.get("system") or "",
                                  params, (), jobs, fresh, replay=document, speed=SPEEDS[pace])
            async with aclosing(ui_stream.frames(plan, table, csv_btn)) as stream:
                async for values in ui_stream.page_values(plan, stream):
                    yield values

        def export_run(run_id_value: str | None, owner_value: str | None, request: gr.Request) -> Any:
            document = _recorded(run_id_value, owner_value, request)
            path = exports.new_folder(_session(request)) / f"phi-playground-run-{str(run_id_value).strip()[:24]}.json"
            path.write_text(json.dumps(document, ensure_ascii=False, indent=1), encoding="utf-8")
            return gr.update(value=str(path), visible=True)

        steps = _deck_steps(deck_file())
        for number, step in enumerate(steps, start=1):
            unknown = [t for t in step.targets or [] if t not in full_catalog.ids]
            if unknown:
                raise SettingsError(f"PLAYGROUND_DECK: {deck_file()}: step {number}: targets: unknown target {unknown[0]!r}")

        def deck_values(at: int) -> list[Any]:
            """Step ``at`` in the page: its line, prompt, system prompt, parameters, columns, targets."""
            step = steps[at]
            targets = [t for t in (step.targets or []) if t in catalog.ids]
            # a parameter the step leaves out goes back to the page's default, not the previous step's
            parameters = [gr.update(value=default if v is None else v)
                          for v, default in ((step.temperature, 0.7), (step.top_p, 1.0), (step.max_tokens, 256))]
            seed_value = gr.update(value="" if step.seed is None else str(step.seed))
            title = f"**Step {at + 1} of {len(steps)}**" + (" · recorded run ready" if step.replay else "")
            try:
                from gradio.utils import get_upload_folder

                from playground import deck

                files = deck.staged_images(step, deck_file() or "", get_upload_folder())
            except OSError as exc:
                raise Refused(f"step {at + 1}: its images cannot be read: {exc}") from None
            return [at, title, {"text": step.prompt, "files": files}, step.system or "", *parameters, seed_value,
                    len(targets) if targets else gr.skip(),
                    *[gr.update(value=targets[i]) if i < len(targets) else gr.skip() for i in range(MAX_COLUMNS)],
                    gr.update(visible=bool(step.replay))]

        def open_presenter(request: gr.Request) -> list[Any]:
            presenting = str(dict(request.query_params).get("presenter") or "") in ("1", "true", "yes")
            if not presenting or not steps:
                return [gr.update(visible=False)] + [gr.skip()] * (len(deck_out))
            return [gr.update(visible=True), *deck_values(0)]

        def deck_step(at: int, delta: int) -> list[Any]:
            return deck_values(max(0, min(len(steps) - 1, int(at or 0) + delta)))

        def deck_recorded(at: int) -> list[Any]:
            from playground import deck

            step = steps[int(at or 0)]
            if not step.replay:
                raise Refused("This step has no recorded run.")
            kind, path = deck.replay_source(step, deck_file() or "")
            try:
                document = records.read_export(path) if kind == "file" and path else records.load(step.replay)
            except records.RecordError as exc:
                raise Refused(f"the step's recorded run: {exc}") from None
            return _replay_setup(document)

        # The page keeps, for each event's inputs and progress targets, a loading status, and on every
        # message of any run it snapshots all their props: six dropdowns of ~45 choices were 35,000
        # structuredClone calls a run, six chat transcripts more. So the page's run event takes the
        # targets from a hidden text the dropdowns fill (in the browser, no server round trip), shows
        # progress on the Run button only, and the other events show theirs on a small component too.
        # The API's /run keeps its arguments: one target per column slot.
        picked = gr.Textbox("\n".join(t or "" for t in [*initial, *[""] * MAX_COLUMNS][:MAX_COLUMNS]),
                            visible=False, elem_id="picked")
        for picker in pickers:
            picker.change(None, pickers, picked, js="(...ids) => ids.map((id) => id ?? '').join('\\n')",
                          queue=False, api_name=False, show_progress="hidden")
        run_outputs = [*chats, *statuses, table, csv_btn, json_btn, histories]
        history_filter = [search, scope, owner_box]
        bench_in = [repeat, warmups, fair, goodput]
        settings_in = [prompt, system, temperature, top_p, max_tokens, seed, n_cols, histories]
        streaming = dict(trigger_mode="once", show_progress="hidden",
                         preprocess=False,  # our own validation names the bad field; Gradio's does not
                         postprocess=False)  # ui_stream sends wire values itself, a frame at a time
        results = gr.State(None)
        results_out = [table, csv_btn, json_btn, *codes, bench_summary, bench_table, ttft_chart, decode_chart,
                       recorded_line, run_id]
        gr.on([prompt.submit, run_btn.click], run_from_page,
              inputs=[*settings_in, picked, *key_boxes, *bench_in, session_mark, page_mark],
              outputs=[*chats, *statuses, histories, results, *lives], api_name=False, show_progress_on=[run_btn],
              **streaming).success(after_run, [results, *history_filter], [*results_out, quota_line, history_table],
                                   api_name=False, show_progress="hidden", show_progress_on=[run_btn],
                                   postprocess=False)
        api_run = gr.Button(visible=False)
        api_run.click(run_from_api, inputs=[*settings_in, *pickers, session_keys], outputs=run_outputs, api_name="run",
                      **streaming
                      ).then(quota_status, None, quota_line, api_name=False, show_progress="hidden")
        gr.Button(visible=False).click(bench_from_api, inputs=[*settings_in, *pickers, *bench_in, session_keys],
                                       outputs=[*run_outputs, bench_table], api_name="bench", **streaming
                                       ).then(quota_status, None, quota_line, api_name=False, show_progress="hidden")
        history_in = dict(api_name=False, show_progress="hidden", show_progress_on=[refresh_btn])
        gr.on([refresh_btn.click, search.submit, scope.change], history_rows, history_filter, history_table,
              **history_in)
        # shown: its runs (a database that is off or unreadable says so in the tab's line, not in a toast)
        history_tab.select(history_after_run, history_filter, history_table, **history_in)
        history_table.select(pick_run, None, run_id, api_name=False, show_progress="hidden", queue=False)
        page_stream = dict(outputs=[*chats, *statuses, histories, results, *lives], api_name=False,
                           show_progress_on=[run_btn], **streaming)
        instant = gr.State("instant")  # Open: the run in the columns as it ended
        for button, trigger, load, source, pace in (
                (replay_btn, replay_btn.click, load_recorded, [run_id, owner_box], speed),
                (open_btn, open_btn.click, load_recorded, [run_id, owner_box], instant),
                (import_btn, import_btn.upload, load_import, import_btn, speed)):
            trigger(load, source, [replay_doc, n_cols, *pickers, tabs], api_name=False, show_progress="hidden",
                    show_progress_on=[button]
                    ).success(replay_from_page, [replay_doc, pace, histories], **page_stream
                              ).success(ui_stream.results_values, results, results_out, api_name=False,
                                        show_progress="hidden", show_progress_on=[run_btn], postprocess=False)
        export_btn.click(export_run, [run_id, owner_box], export_file, api_name=False, show_progress_on=[export_btn])
        share_btn.click(share_link, [run_id, owner_box], share_line, api_name=False, show_progress_on=[share_btn])
        deck_out = [deck_at, deck_line, prompt, system, temperature, top_p, max_tokens, seed, n_cols, *pickers,
                    deck_replay]
        if steps:
            demo.load(open_presenter, None, [deck_box, *deck_out], api_name=False, show_progress="hidden",
                      js=PRESENTER_JS)
        else:  # ?presenter=1 without a deck: the larger type only, and no event for every page load
            demo.load(None, None, None, js=PRESENTER_JS, api_name=False, queue=False)
        deck_prev.click(lambda at: deck_step(at, -1), deck_at, deck_out, api_name=False, queue=False,
                        show_progress="hidden")
        deck_next.click(lambda at: deck_step(at, 1), deck_at, deck_out, api_name=False, queue=False,
                        show_progress="hidden")
        deck_replay.click(deck_recorded, deck_at, [replay_doc, n_cols, *pickers], api_name=False,
                          show_progress="hidden").success(replay_from_page, [replay_doc, speed, histories],
                                                          **page_stream
                                                          ).success(ui_stream.results_values, results, results_out,
                                                                    api_name=False, show_progress="hidden",
                                                                    postprocess=False)
        demo.load(open_shared, None, [replay_doc, n_cols, *pickers, run_id], api_name=False, show_progress="hidden"
                  ).then(replay_shared, [replay_doc, speed, histories], **page_stream
                         ).then(ui_stream.results_values, results, results_out, api_name=False,
                                show_progress="hidden", postprocess=False)
        settings_btn.click(None, None, None, js=SETTINGS_TOGGLE_JS, api_name=False, queue=False)
        stop_btn.click(stop, None, None, api_name="stop", concurrency_limit=None, queue=False)
        for i, button in enumerate(column_stops):
            button.click(_column_stopper(i), None, None, api_name=False, concurrency_limit=None, queue=False)
        column_index = gr.Number(visible=False)  # as sent: stop_one refuses 1.5 (precision=0 rounded it to 2)
        gr.Button(visible=False).click(stop_one, column_index, None, api_name="stop_column",
                                       concurrency_limit=None, queue=False)
        cleared = [*chats, *statuses, table, csv_btn, json_btn, histories]
        clear_btn.click(clear_page, None, [*cleared, *lives, results], api_name=False, show_progress_on=[clear_btn])
        gr.Button(visible=False).click(clear, None, cleared, api_name="clear")
        n_cols.change(show_columns, n_cols, slots, api_name=False, show_progress="hidden", show_progress_on=[n_cols])
        demo.load(refresh_choices, None, pickers, api_name=False, show_progress="hidden", show_progress_on=[picked])
        for box in key_boxes:  # the pickers say whose key each target will use
            box.blur(refresh_choices, key_boxes, pickers, api_name=False, show_progress="hidden",
                     show_progress_on=[picked])
        demo.unload(_forget_typed_keys)
        demo.load(ui_arena.room_from_link, None, [arena_room, board_room], api_name=False, queue=False,
                  show_progress="hidden")
        for tab in (compare_tab, history_tab):  # the leaderboard refreshes only while it is shown
            tab.select(lambda: gr.Timer(active=False), None, board_timer, api_name=False, queue=False)
        remember_inputs = [remember, *key_boxes]
        for trigger in [remember.change, *(box.blur for box in key_boxes)]:
            trigger(_to_remember, remember_inputs, remembered, api_name=False, show_progress="hidden",
                    queue=False)
        demo.load(_on_load, [remembered, session_mark], [remember, *key_boxes, page_mark], api_name=False,
                  show_progress="hidden", queue=False).then(refresh_choices, key_boxes, pickers, api_name=False, show_progress="hidden",
                                    show_progress_on=[picked])
        keys_said = gr.Textbox(visible=False)
        gr.Button(visible=False).click(set_keys, key_boxes, [session_keys, keys_said], api_name="keys")
        if quota is not None:
            demo.load(quota_status, None, quota_line, api_name=False, show_progress="hidden")
    demo.queue(default_concurrency_limit=settings.concurrency)
    _quiet_queue(demo)
    return demo


def _quiet_queue(demo: gr.Blocks) -> None:
    """Poll Gradio's queue less often. While nothing waits in it, its loop wakes every millisecond:
    measured, 53 ms of CPU a second for an idle app, 14 at 10 ms; on the loop that serves the
    frames. The cost: a queued event (a click, each follow-up step of a run, a timer's tick, an
    event waiting for a free slot) may start up to 10 ms later; no timing includes that, its clock
    starts when the request is sent. Streamed frames do not go through this loop, and events
    already waiting are taken one after another without a pause. The progress poll only serves
    ``gr.Progress``, which the app does not use. These attributes of ``gradio.queueing.Queue`` are
    read on every turn of its loops; a later ``demo.queue()`` would make a new queue without them."""
    queue = getattr(demo, "_queue", None)
    if queue is None or not hasattr(queue, "sleep_when_free"):
        log.warning("Gradio's queue has no sleep_when_free: its poll interval is left as it is")
        return
    queue.sleep_when_free = QUEUE_POLL_S
    queue.progress_update_sleep_when_free = PROGRESS_POLL_S
    # After every event the queue summarises up to 10,000 past events with pandas, holding the GIL
    # (2 ms with a few, 8 ms with 10,000; a run makes two or three events) for Gradio's monitoring,
    # which launch_options turns off. Its own knob (GRADIO_ANALYTICS_CACHE_FREQUENCY) skips it.
    if hasattr(queue, "ANAYLTICS_CACHE_FREQUENCY"):  # sic
        queue.ANAYLTICS_CACHE_FREQUENCY = sys.maxsize
    else:
        log.warning("Gradio's queue has no ANAYLTICS_CACHE_FREQUENCY: it summarises its events after each one")


class NoDeepLinks:
    """ASGI middleware: a 404 for Gradio's deep-link routes (see ``launch``)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and (scope.get("path", "").rstrip("/").endswith("/deep_link")
                                            or "deep_link=" in scope.get("query_string", b"").decode("latin-1")):
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"deep links are off: they would store typed keys"})
            return
        await self.app(scope, receive, send)


def launch(catalog: Catalog | None = None, host: str | None = None, port: int | None = None, **kwargs: Any) -> Any:
    if found := problems():
        raise SettingsError("\n".join(found))
    settings = from_env()
    secrets.redact_logs()  # no log line of any library may carry a key
    measure_process.use("auto")  # many sessions may share this process: under load, HTTP streams are stamped in their own
    warmup.start()  # imports, tokenizer, measurement loop and process: in a thread, before the first run
    demo = build_ui(catalog, settings)
    return demo.launch(server_name=host or settings.host, server_port=port or settings.port,
                       **launch_options(**kwargs))


def launch_options(**kwargs: Any) -> dict[str, Any]:
    """``Blocks.launch`` options every launch of the app uses (tests launch with them too)."""
    kwargs.setdefault("css", CSS)
    kwargs.setdefault("max_file_size", MAX_FILE_BYTES)  # Gradio refuses a bigger upload before it is stored
    # The key boxes' values live in the session's component state: Gradio's deep links write that state
    # to disk and serve it back from /config, and its run history keeps the inputs of runs. Neither here.
    kwargs.setdefault("run_history", False)
    # Gradio's monitoring (None means on) serves /monitoring/summary, the events' timings per function,
    # to anyone on an app without a login; the queue's per-event summary for it is off (_quiet_queue)
    kwargs.setdefault("enable_monitoring", False)
    # Gradio keeps each session (its copy of the page's config, the components and values a run
    # updated) until 10,000 newer ones push it out; only gr.State values expire,
    # an hour after the page closes. About 0.5 MB a session after 10 runs (bench/load.py): 5 GB at
    # that cap. Past ours, the least recently active session goes first.
    kwargs.setdefault("state_session_capacity", session_capacity())
    app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(NoDeepLinks)]
    kwargs["app_kwargs"] = app_kwargs
    return kwargs
