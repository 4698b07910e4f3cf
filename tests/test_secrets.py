"""Keys never leak: the forms libraries print a key in, every path that carries text to a user
(column errors and notices of any backend, availability labels, the results table, the CSV and
JSON exports, log lines), the environment of model processes, and the Ollama key's host."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import quote

import httpx
import pytest

from playground import secrets
from playground.errors import READY, Availability, BackendError
from playground.backends.ollama_native import new_client
from playground.backends.worker_process import WorkerProcess
from playground.catalog import Target
from playground.events import ErrorKind, Event, Notice, RequestSent
from playground.report import results_frame, run_document, write_exports
from playground.request import ChatRequest, Message, make_params
from playground.runner import Job, Run
from playground.ui_format import choice_label

CANARY = "sk-canary-7Qx/+9=Zp"  # a slash, a plus and an equals sign: URL encoding changes it
TESTS = str(Path(__file__).resolve().parent)


@pytest.fixture(autouse=True)
def canary(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CANARY_API_KEY", CANARY + "\n")  # pasted from a file: a trailing newline
    return CANARY


LEAKS = [
    f"Illegal header value b'Bearer {CANARY}\\n'",  # httpx's message: the bytes repr
    f"bad header {CANARY!r}",
    f"GET https://x.test/v1?key={quote(CANARY, safe='')}",
    f"the key {CANARY} is wrong",
    "Authorization: Bearer sk-someone-elses-key",  # a bearer value whatever the key
    '{"api-key": "azure-0123456789abcdef"}',
]


@pytest.mark.parametrize("text", LEAKS)
def test_redact_blanks_every_form_of_a_key(text: str) -> None:
    clean = secrets.redact(text)
    assert CANARY not in clean and repr(CANARY)[1:-1] not in clean and quote(CANARY, safe="") not in clean
    assert "sk-someone-elses-key" not in clean and "azure-0123456789abcdef" not in clean
    assert "***" in clean


def test_ordinary_words_survive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # not a secret, though it says TOKEN
    monkeypatch.setenv("GPG_KEY", "true")
    assert secrets.redact("stream cut after 3 tokens: false start, true end") == \
        "stream cut after 3 tokens: false start, true end"


def test_a_key_is_stripped_and_one_with_a_control_character_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert secrets.env_key("CANARY_API_KEY") == CANARY
    monkeypatch.setenv("BROKEN_API_KEY", "sk-abc\x07def")
    assert secrets.env_key("BROKEN_API_KEY") is None
    assert secrets.key_problem("BROKEN_API_KEY") == "BROKEN_API_KEY contains a control character"
    assert secrets.key_problem("UNSET_API_KEY_FOR_TEST") == "set UNSET_API_KEY_FOR_TEST"


def test_a_catalog_key_variable_is_a_secret_whatever_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_PLAIN_NAME", "plainly-secret-value")
    assert "plainly-secret-value" in secrets.redact("plainly-secret-value")  # not known yet
    Target(id="t", label="t", backend="openai", model="m", base_url="http://127.0.0.1:9/v1",
           api_key_env="MY_PLAIN_NAME")
    assert secrets.redact("x plainly-secret-value y") == "x *** y"


def test_log_lines_of_any_library_are_redacted() -> None:
    secrets.redact_logs()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("some.library")
    logger.addHandler(handler)
    try:
        logger.warning("request failed: %s", f"Illegal header value b'Bearer {CANARY}\\n'")
        try:
            raise ValueError(f"bad key {CANARY}")
        except ValueError:
            logger.exception("while sending")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "request failed" in text and "while sending" in text
    assert CANARY not in text and repr(CANARY)[1:-1] not in text


class Leaky:
    """A backend whose failures carry the key in the forms real libraries print it."""

    name = "leaky"
    supports_vision = False

    def __init__(self, message: str):
        self.message = message

    def availability(self) -> Availability:
        return READY

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        yield RequestSent()
        yield Notice(f"retrying with {CANARY}")
        raise BackendError(ErrorKind.CONNECTION, self.message)


async def test_no_column_table_or_export_carries_a_key(tmp_path: Path) -> None:
    target = Target(id="leaky", label="leaky", backend="ollama", model="m")
    request = ChatRequest((Message("user", "hi"),), make_params())
    run = Run([Job(target, request) for _ in LEAKS], backends=[Leaky(m) for m in LEAKS])  # type: ignore[list-item]
    columns: list[Any] = []
    async for columns in run.frames():
        pass
    assert [c.status for c in columns] == ["error"] * len(LEAKS)
    document = run_document("hi", None, request.params, columns)
    csv_path, json_path = write_exports(document, tmp_path)
    texts = [c.error or "" for c in columns] + [n for c in columns for n in c.notices]
    texts += [results_frame(columns).to_csv(), csv_path.read_text(), json_path.read_text(), json.dumps(document)]
    for text in texts:
        assert CANARY not in text and repr(CANARY)[1:-1] not in text and quote(CANARY, safe="") not in text
        assert "sk-someone-elses-key" not in text


def test_an_availability_label_carries_no_key() -> None:
    target = Target(id="o", label="Ollama", backend="ollama", model="m")
    label = choice_label(target, Availability("unavailable", f"no Ollama answer: b'Bearer {CANARY}\\n'"))
    assert label.startswith("Ollama — ✗ no Ollama answer") and CANARY not in label


def test_the_ollama_key_goes_only_to_ollama_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:11434")
    monkeypatch.setenv("OLLAMA_API_KEY", "ollama-key-123456\n")
    timeout = httpx.Timeout(1.0)
    assert new_client("http://127.0.0.1:11434", timeout)._client.headers["authorization"] == "Bearer ollama-key-123456"
    assert "authorization" not in new_client("http://10.1.2.3:11434", timeout)._client.headers


def test_a_model_process_starts_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("GITHUB_TOKEN", "ghp-canary-0123456789")
    names: list[str] = []
    for keeps in (False, True):
        worker = WorkerProcess("env", "model_process_fakes:secret_names", (), keeps_keys=keeps).start(timeout_s=60)
        try:
            got: list[Any] = []
            worker.generate(Target(id="f", label="f", backend="onnx", model="f", source="path"),
                            ChatRequest((Message("user", "x"),), make_params()), got.append, threading.Event())
            names.append("".join(e.text for e in got if hasattr(e, "text")))
        finally:
            worker.close()
    assert names[0] == "none", names[0]  # a model process: no key of any kind
    assert "GITHUB_TOKEN" in names[1] and "CANARY_API_KEY" in names[1]  # the measurement process needs them


def test_csv_cells_never_run_as_formulas() -> None:
    from playground.report import csv_safe

    assert csv_safe("=HYPERLINK(\"http://x.test\")") == "'=HYPERLINK(\"http://x.test\")"
    assert [csv_safe(v) for v in ("+1", "-2", "@SUM(A1)", "plain", 3.5)] == ["'+1", "'-2", "'@SUM(A1)", "plain", 3.5]


def test_a_non_ascii_key_is_blanked_as_servers_echo_it(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-ünï-中文-€-key-4417"
    monkeypatch.setenv("UNICODE_API_KEY", key)
    for echoed in (key, json.dumps(key)[1:-1], key.encode().decode("latin-1"), key.encode().decode("cp1252", "replace"),
                   quote(key, safe=""),
                   # read from the header as latin-1, then URL-encoded as UTF-8 (a Python server's link)
                   quote(key.encode().decode("latin-1"), safe=""), quote(key.encode().decode("cp1252", "replace"))):
        clean = secrets.redact(f"bad key: {echoed}.")
        assert "4417" not in clean and clean.startswith("bad key: ***"), (echoed, clean)
