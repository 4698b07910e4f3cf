"""Keys: read from the environment, checked, and kept out of every text a user or a log can see.

A key reaches a user only through text: an error message, an availability reason, a notice, a
log line, an export. ``redact`` is the one function every such path goes through (the runner for
column errors and notices, the picker for availability reasons; ``redact_log``, for a log-record
factory, adds every key a visitor typed); it knows each secret in the forms libraries print it: as written, stripped, escaped
as Python's ``repr`` writes it (``b'Bearer sk-...\\n'``) and URL-encoded, and it blanks any
``Bearer ...`` or ``api-key: ...`` value whatever the key.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import os
import re
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable, Mapping
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_SECRET_LEN = 4  # shorter values would blank ordinary words
#: environment variables whose values are secrets, by a word of their name: GITHUB_TOKEN,
#: NVIDIA_API_KEY, AZURE_AI_API_KEY, HF_TOKEN (not TOKENIZERS_PARALLELISM); plus every variable a
#: catalog names as a target's ``api_key_env`` (``watch``)
SECRET_NAME = re.compile(r"(^|_)(API_?KEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(_|$)", re.IGNORECASE)
NOT_SECRETS = {"true", "false", "none", "null", "yes", "no", "on", "off"}
_HEADER_VALUE = re.compile(r"(?i)(\bbearer\s+|\bapi[-_]?key[\"']?\s*[:=]\s*[\"']?)[^\s'\",;)}\]]+")

_session_secrets: dict[str, None] = {}  # insertion-ordered: the oldest go first when it is full
_watched: set[str] = set()
_lock = threading.Lock()


def watch(name: str) -> None:
    """Treat the variable ``name`` as a secret whatever it is called (a catalog's ``api_key_env``)."""
    with _lock:
        _watched.add(name)


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) or name in _watched


def control_character(value: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in value)


def key_problem(name: str) -> str | None:
    """What is wrong with the key in ``name``, naming the variable and never its value."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        return f"set {name}"
    if control_character(value.strip()):
        return f"{name} contains a control character"
    return None


def env_key(name: str | None) -> str | None:
    """The key in ``name``, without surrounding whitespace (a key pasted from a file often ends in
    a newline, which no HTTP header may carry); None if unset, empty or unusable (see key_problem)."""
    if not name:
        return None
    value = (os.environ.get(name) or "").strip()
    return value if value and not control_character(value) else None


OWNER_KEY = "PLAYGROUND_OWNER_KEY"


def owner_key() -> str | None:
    """PLAYGROUND_OWNER_KEY: in public mode, whoever types it sees everyone's recorded runs."""
    return env_key(OWNER_KEY)


OWNER_TRIES_PER_MINUTE = 10  # wrong owner keys, from anyone: past that, none is checked for the minute
_owner_misses: list[float] = []


def is_owner(typed: str | None, now: float | None = None) -> bool:
    key = owner_key()
    if not key or not typed:
        return False
    now = time.monotonic() if now is None else now
    with _lock:
        _owner_misses[:] = [t for t in _owner_misses if now - t < 60]
        if len(_owner_misses) >= OWNER_TRIES_PER_MINUTE:
            return False  # guessing: the page's events are not otherwise rate-limited
        if hmac.compare_digest(str(typed).strip().encode(), key.encode()):
            return True
        _owner_misses.append(now)
        return False


MAX_REMEMBERED = 10_000


def remember(secret: str) -> None:
    """A secret that lives outside the environment (a key a user typed for their session): kept out
    of the logs (``redact_log``); its visitor's own texts pass it to ``redact`` themselves."""
    if len(secret.strip()) >= MIN_SECRET_LEN:
        with _lock:
            _session_secrets.pop(secret, None)
            _session_secrets[secret] = None
            while len(_session_secrets) > MAX_REMEMBERED:  # bounded: the oldest go first
                del _session_secrets[next(iter(_session_secrets))]


def forget(secret: str) -> None:
    with _lock:
        _session_secrets.pop(secret, None)


def _env_secrets() -> frozenset[str]:
    return frozenset(value for name, value in os.environ.items() if is_secret_name(name) and value)


def _remembered() -> frozenset[str]:
    with _lock:
        return frozenset(_session_secrets)


def _forms(secret: str) -> set[str]:
    forms = set()
    for s in {secret, secret.strip()}:
        # the UTF-8 bytes read as latin-1 or cp1252: how a server that reads header bytes as one of
        # those echoes a non-ASCII key; and JSON's escapes, as json.dumps writes it by default
        mojibake = {s.encode().decode("latin-1"), s.encode().decode("cp1252", "replace")}
        forms |= {s, repr(s)[1:-1], repr(s.encode())[2:-1], quote(s, safe=""), quote_plus(s), json.dumps(s)[1:-1],
                  *mojibake, *(repr(m)[1:-1] for m in mojibake),
                  *(f(m, safe="") for m in mojibake for f in (quote, quote_plus))}  # read as latin-1, sent on in a URL
    return {f for f in forms if len(f) >= MIN_SECRET_LEN and f.lower() not in NOT_SECRETS}


def _compiled(values: frozenset[str]) -> re.Pattern[str] | None:
    """One regular expression for every form of every secret in ``values``."""
    forms = sorted({f for s in values for f in _forms(s)}, key=len, reverse=True)  # longest first
    return re.compile("|".join(map(re.escape, forms))) if forms else None


# each kind of set in its own cache: the environment's keys and every remembered key (for the logs)
# change rarely, a visitor's own keys differ per run; in one cache, 17 visitors would push out the
# logs' pattern, rebuilt then for each log line (107 ms with 3,000 remembered keys)
_env_pattern = functools.lru_cache(maxsize=2)(_compiled)
_own_pattern = functools.lru_cache(maxsize=64)(_compiled)
_log_pattern = functools.lru_cache(maxsize=2)(_compiled)


def _blank(text: str, pattern: re.Pattern[str] | None) -> str:
    return pattern.sub(MASK, text) if pattern is not None else text


def redact(text: str, own: Iterable[str] = ()) -> str:
    """``text`` with every secret of the environment, each of ``own`` (the keys of the visitor whose
    text it is), and any bearer or api-key header value replaced by ``***``.

    Another visitor's typed keys are not among them: a visitor who typed "the" or '"text":' as a
    key would otherwise blank that in everyone's errors and records (and break a record's JSON)."""
    if not text:
        return text
    text = _blank(text, _env_pattern(_env_secrets()))
    mine = frozenset(s for s in own if s and len(s.strip()) >= MIN_SECRET_LEN)
    if mine:
        text = _blank(text, _own_pattern(mine))
    return _HEADER_VALUE.sub(lambda m: m.group(1) + MASK, text)


def redact_log(text: str) -> str:
    """For a log line, which only the operator reads: every typed key remembered, whoever typed it."""
    return redact(_blank(text, _log_pattern(_remembered())) if text else text)


def without_secrets(env: dict[str, str]) -> dict[str, str]:
    """An environment for a process that needs no keys (a model process)."""
    return {name: value for name, value in env.items() if not is_secret_name(name)}


_factory_installed = False


def redact_logs() -> None:
    """Every log record, from any library, is redacted as it is made (handlers and their filters
    vary by library; the record factory is the one place all of them share)."""
    global _factory_installed
    if _factory_installed:
        return
    make = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: leave it to the handler to report
            return record
        clean = redact_log(message)
        if record.exc_info and record.exc_info[1] is not None:
            clean_exc = redact_log(str(record.exc_info[1]))
            if clean_exc != str(record.exc_info[1]):
                record.exc_info, record.exc_text = None, None  # its traceback would repeat the secret
                clean = f"{clean} ({clean_exc})"
        record.msg, record.args = clean, None
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


@dataclass(frozen=True)
class Credentials:
    """What a visitor typed in *Your keys*, by the variable each value stands in for
    (``GITHUB_TOKEN``, ``AZURE_AI_ENDPOINT``, ...): used for their session's runs only, never
    stored beyond the session, never in a repr, a log or an export."""

    values: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    public_only: bool = False  # a URL they typed must resolve to public addresses only
    secret_names: frozenset[str] = frozenset()  # which values are keys (the others: URLs, model names)

    def get(self, name: str | None) -> str | None:
        value = (self.values.get(name) or "").strip() if name else ""
        return value or None

    def problem(self, name: str | None) -> str | None:
        """What is wrong with a typed value, naming the field, never the value."""
        value = self.get(name)
        return f"the {name} you typed contains a control character" if value and control_character(value) else None

    def secrets(self) -> list[str]:
        return [v for n, v in self.values.items() if n in self.secret_names and v]

    def __repr__(self) -> str:
        return f"Credentials({', '.join(sorted(self.values)) or 'none'})"


def from_form(values: Mapping[str, str | None], public_only: bool, secret_names: frozenset[str]) -> Credentials | None:
    """The non-empty fields of the keys form; the keys among them are remembered for redaction
    (a URL or a model name is not: typing "http" must not blank that word for everyone)."""
    kept = {name: value.strip() for name, value in values.items() if value and value.strip()}
    credentials = Credentials(kept, public_only, secret_names & set(kept)) if kept else None
    for secret in credentials.secrets() if credentials else ():
        remember(secret)
    return credentials
