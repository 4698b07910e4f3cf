"""Canary keys through every fault of both protocols, looked for on every surface a person or a log
can read: the page HTML, /config, the API info, every frame a run streams through ``gradio_client``,
the results table, the CSV and JSON downloads, the recorded runs (and the database's bytes), the
command line's output and the app's log.

The keys come plain, with a trailing newline, with a trailing space, with characters beyond ASCII,
and with a control character that no HTTP header can carry (refused by the variable's name before
any transport could print it in its error). The faulting servers echo what they were sent, as
real ones do: raw, repr-escaped, and URL-encoded inside a link. A canary's middle ("canary-plain-Q7x")
is in every one of those forms, so looking for it finds any of them, and a partial mask does not.

Every key form a request can carry meets every OpenAI fault (ordered so the stalls share one
batch's wait), on the app's own measurement thread (the UI's way at light load); one run also
goes the way of a loaded app, through the measurement process, whose log lines reach the app's
stderr directly."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client

from playground import secrets
from playground.catalog import Catalog, Target
from playground.settings import MAX_COLUMNS, Settings
from playground.ui import build_ui, launch_options
from tests.ollama_server import OllamaStub
from tests.sse_server import Script, ScriptedServer
from tests.test_ui import free_port, run_args

pytestmark = pytest.mark.usefixtures("close_clients")

CANARIES = {  # variable -> value as set
    "CANARY_PLAIN_KEY": "sk-canary-plain-Q7x/+9=Zp",
    "CANARY_NEWLINE_KEY": "sk-canary-newline-R2v/+8=Yq\n",
    "CANARY_SPACE_KEY": "sk-canary-space-T5w/+7=Xr ",
    "CANARY_UNICODE_KEY": "sk-canary-unicode-\u00e9\u4e2d/+6=Ws",
    "CANARY_CONTROL_KEY": "sk-canary-control-P4u\x07/+4=Us",  # a header cannot carry it
    "OLLAMA_API_KEY": "sk-canary-ollama-U3z/+5=Vt",
}
MARKERS = ["canary-plain-Q7x", "canary-newline-R2v", "canary-space-T5w", "canary-unicode-", "canary-control-P4u",
           "canary-ollama-U3z"]
KEY_FORMS = {"plain": "CANARY_PLAIN_KEY", "newline": "CANARY_NEWLINE_KEY", "space": "CANARY_SPACE_KEY",
             "unicode": "CANARY_UNICODE_KEY"}  # the ones a request can carry; the control one cannot

OPENAI_FAULTS: dict[str, Script] = {
    "f401": Script(status=401, echo_key=True), "f403": Script(status=403, echo_key=True),
    "f429": Script(status=429, retry_after="7", echo_key=True), "f500": Script(status=500, echo_key=True),
    "f502": Script(status=502), "malformed": Script(fault="malformed"), "cut": Script(fault="drop", tokens=20),
    "stall": Script(fault="hang"), "header": Script(tokens=3),
}
ECHOED = ("f401", "f403", "f429", "f500")  # the server sends the key back in its message: the column shows ***
# every key form meets every fault; "header" is the control key's own (a header cannot carry it)
CROSSED = [name for name in OPENAI_FAULTS if name != "header"] + ["f404", "refused"]
OLLAMA_FAULTS = ["401", "403", "429", "500", "502", "malformed", "cut", "error_line", "hang"]


def shown(value: Any) -> str:
    """What a page shows of Markdown (the columns escape what a server said): its backslash escapes
    undone in every string, so that an escaped canary ("sk\\-...") is found as the canary."""
    from playground.records import map_strings

    return json.dumps(map_strings(value, lambda text: re.sub(r"\\(.)", r"\1", text)), default=str)


def leaks(text: str) -> list[str]:
    return [marker for marker in MARKERS if marker in text]


@pytest.fixture(scope="module")
def env() -> Iterator[None]:
    patch = pytest.MonkeyPatch()
    for name, value in CANARIES.items():
        patch.setenv(name, value)
    yield
    patch.undo()


@pytest.fixture(scope="module")
def servers(env: None) -> Iterator[tuple[ScriptedServer, OllamaStub]]:
    ollama_models = tuple(f"o{mode}:latest" for mode in OLLAMA_FAULTS)
    modes = {f"o{mode}:latest": mode for mode in OLLAMA_FAULTS}
    with ScriptedServer(OPENAI_FAULTS) as openai, OllamaStub(models=ollama_models, modes=modes) as ollama:
        patch = pytest.MonkeyPatch()
        patch.setenv("OLLAMA_HOST", ollama.base_url)  # the only host the Ollama key goes to
        yield openai, ollama
        patch.undo()


@pytest.fixture(scope="module")
def targets(servers: tuple[ScriptedServer, OllamaStub]) -> list[Target]:
    openai, ollama = servers
    closed = f"http://127.0.0.1:{free_port()}"
    made = []
    # ordered by fault, so the four stalls share one batch and its 2 s wait
    for name in CROSSED:
        for form, key in KEY_FORMS.items():
            url = f"{closed}/v1" if name == "refused" else openai.base_url
            made.append(Target(id=f"openai-{name}-{form}", label=f"openai {name} {form}", backend="openai",
                               model="unknown-model" if name == "f404" else name, base_url=url, api_key_env=key,
                               timeout_s=2.0, connect_timeout_s=2.0))
    made.append(Target(id="openai-header", label="openai header", backend="openai", model="header",
                       base_url=openai.base_url, api_key_env="CANARY_CONTROL_KEY", timeout_s=2.0, connect_timeout_s=2.0))
    for mode in [*OLLAMA_FAULTS, "404"]:
        made.append(Target(id=f"ollama-{mode}", label=f"ollama {mode}", backend="ollama", model=f"o{mode}:latest",
                           timeout_s=2.0, connect_timeout_s=2.0))
    made.append(Target(id="ollama-refused", label="ollama refused", backend="ollama", model="x", base_url=closed,
                       timeout_s=2.0, connect_timeout_s=2.0))
    return made


@pytest.fixture(scope="module")
def app(targets: list[Target]) -> Iterator[tuple[str, io.StringIO]]:
    secrets.redact_logs()  # as launch() does
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # everything any library says, at its most talkative
    settings = Settings(host="127.0.0.1", port=None, columns=MAX_COLUMNS, default_targets=[], concurrency=8,
                        catalog=None)
    demo = build_ui(Catalog(targets=targets, defaults=[targets[0].id]), settings)
    demo.launch(**launch_options(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(),
                                 quiet=True))
    try:
        yield demo.local_url, log
    finally:
        demo.close()
        root.removeHandler(handler)
        root.setLevel(level)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode("utf-8", errors="replace")


def test_no_canary_on_any_surface_through_any_fault(app: tuple[str, io.StringIO], targets: list[Target],
                                                    tmp_path: Path) -> None:
    url, log = app
    client = Client(url, verbose=False)
    seen: dict[str, str] = {}
    for start in range(0, len(targets), MAX_COLUMNS):
        batch = [t.id for t in targets[start:start + MAX_COLUMNS]]
        job = client.submit(*run_args("hello", batch, max_tokens=8, columns=len(batch)), api_name="/run")
        job.result(timeout=120)
        frames = job.outputs()
        final = frames[-1]
        statuses = final[MAX_COLUMNS:MAX_COLUMNS + len(batch)]
        for target_id, status in zip(batch, statuses):
            seen[target_id] = json.loads(shown(str(status)))
        seen[f"frames {batch}"] = json.dumps(frames, default=str)
        seen[f"frames {batch}, as shown"] = shown(frames)
        for update in final[2 * MAX_COLUMNS + 1:2 * MAX_COLUMNS + 3]:  # the CSV and JSON downloads
            path = update["value"] if isinstance(update, dict) else update
            seen[f"download {path}"] = Path(path).read_text(encoding="utf-8")
    # every column failed (or was cut) as scripted: the faults were reached, not skipped
    for target in targets:
        assert "✗" in seen[target.id] or "error" in seen[target.id].lower(), (target.id, seen[target.id])
    echoed = [t.id for t in targets if t.id.split("-")[1] in ECHOED and t.backend == "openai"
              or t.id in {"ollama-401", "ollama-403", "ollama-429"}]
    assert len(echoed) == 4 * 4 + 3
    for target_id in echoed:  # the key went there and back: what the column shows is the redaction's work
        assert "***" in seen[target_id], (target_id, seen[target_id])
    seen["page"] = fetch(url)
    seen["/config"] = fetch(url.rstrip("/") + "/config")
    seen["API info"] = fetch(url.rstrip("/") + "/gradio_api/info")
    seen["log"] = log.getvalue()
    from playground import records

    database = records.url() or ""
    assert database.startswith("sqlite:///")
    stored = [records.load(r["id"]) for r in records.recent(None, "hello", limit=200)]
    assert len(stored) >= 2, "the runs were not recorded"
    seen["recorded runs"] = json.dumps(stored)
    for suffix in ("", "-wal"):  # the database's bytes, its write-ahead log included
        file = Path(database.removeprefix("sqlite:///") + suffix)
        if file.exists():
            seen[f"database file {file.name}"] = file.read_bytes().decode("utf-8", errors="replace")
    assert "HTTP Request: POST http://127.0.0.1" in seen["log"], "the log captured nothing of the runs"
    leaked = {where: leaks(text) for where, text in seen.items() if leaks(text)}
    assert not leaked, leaked


def test_no_canary_in_the_command_lines_output(targets: list[Target], tmp_path: Path,
                                               clean_env: Any) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(json.dumps({"targets": [t.model_dump(exclude_none=True) for t in targets]}))
    env = clean_env(**CANARIES, OLLAMA_HOST=os.environ["OLLAMA_HOST"])
    for output in ("--json", None):
        done = subprocess.run([sys.executable, "-m", "playground", "run", "--catalog", str(catalog), "--targets",
                               ",".join(t.id for t in targets), "--prompt", "hello", "--max-tokens", "8",
                               *([output] if output else [])], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=180)
        assert done.returncode == 1, done.stderr[-2000:]
        assert "openai-f401" in done.stdout or "openai f401" in done.stdout
        assert not leaks(done.stdout + done.stderr), (leaks(done.stdout), leaks(done.stderr))


def test_no_canary_through_the_measurement_process(app: tuple[str, io.StringIO], capfd: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The app's path under load: HTTP streams run in the measurement process, which keeps the keys
    and writes its log lines straight to the app's stderr (here, at DEBUG)."""
    from playground import measure_process

    (tmp_path / "sitecustomize.py").write_text("import logging, os, sys\n"
                                               "logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)\n"
                                               "sys.stderr.write(f'child {os.getpid()} logs at DEBUG\\n')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.delenv("PLAYGROUND_MEASURE_PROCESS", raising=False)
    if measure_process._worker is not None:  # one started before capfd would write elsewhere
        measure_process._worker.close()
        measure_process._worker = None
    measure_process.use(True)
    url, log = app
    batch = ["openai-f401-plain", "openai-f429-unicode", "openai-f502-newline", "openai-malformed-space",
             "ollama-401", "ollama-429"]
    try:
        job = Client(url, verbose=False).submit(*run_args("hello", batch, max_tokens=8, columns=len(batch)),
                                                api_name="/run")
        job.result(timeout=120)
        child = measure_process._worker
        assert child is not None and child.alive, "the run did not go through the measurement process"
        pid = child.pid
    finally:
        measure_process.use(False)
        if measure_process._worker is not None:
            measure_process._worker.close()
            measure_process._worker = None
    final = job.outputs()[-1]
    statuses = [json.loads(shown(str(s))) for s in final[MAX_COLUMNS:MAX_COLUMNS + len(batch)]]
    for target_id, status in zip(batch, statuses):
        if "f502" not in target_id and "malformed" not in target_id:
            assert "***" in status, (target_id, status)  # the echoed key reached the child and was redacted there
    captured = capfd.readouterr()
    assert f"child {pid} logs at DEBUG" in captured.err, "the child's stderr was not captured"
    assert "HTTP Request: POST http://127.0.0.1" in captured.err, "the child logged nothing of the runs"
    seen = {"frames": json.dumps(job.outputs(), default=str), "frames, as shown": shown(job.outputs()),
            "stdout": captured.out, "stderr": captured.err,
            "log": log.getvalue()}
    leaked = {where: leaks(text) for where, text in seen.items() if leaks(text)}
    assert not leaked, leaked
