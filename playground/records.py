"""Every finished run, recorded in a real database (SQLAlchemy Core): SQLite by default, PostgreSQL
when ``PLAYGROUND_DB=postgresql://…`` (replicas behind a balancer share one database).

A run is its prompt, system prompt, parameters, images (described: name, size, a hash; never the
bytes), environment, and per column the target, the text, every text event's offset from the
request (seconds) with its length, the metrics, the server's timings and the outcome. Never a key:
what is stored is what the exports already carry (``report.run_document``), and a key-shaped
string left in it is redacted on the way in.

Recording never fails a run: a database that cannot be opened or written (read-only, full)
gives a notice instead. Runs older than ``PLAYGROUND_KEEP_DAYS`` and beyond the newest
``PLAYGROUND_KEEP_RUNS`` are pruned when a run is recorded. Blocking throughout: call it off any
event loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets as stdlib_secrets
import threading
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import sqlalchemy as sa

from playground import secrets, settings

if TYPE_CHECKING:
    from playground.runner import Column

log = logging.getLogger(__name__)
FORMAT = 1  # of an exported run file

metadata = sa.MetaData()
runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # unguessable: it is the share link's key
    sa.Column("session", sa.String(32), nullable=False, index=True),  # a hash of the browser session
    sa.Column("created", sa.Float, nullable=False, index=True),  # Unix time
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("targets", sa.Text, nullable=False),  # comma-separated ids, for search
    sa.Column("document", sa.Text, nullable=False),  # the run as JSON (see module docstring)
)
_engines: dict[str, sa.Engine] = {}
_lock = threading.Lock()


class RecordError(Exception):
    """The database could not take or give a run; the message says why, fit to show."""


def url() -> str | None:
    """The database's URL; None when recording is off (PLAYGROUND_DB=off)."""
    chosen = settings.db_url()
    if chosen and chosen.lower() == "off":
        return None
    if chosen and chosen.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + chosen.split("://", 1)[1]  # psycopg 3, not SQLAlchemy's psycopg2 default
    if chosen and "://" in chosen:
        return chosen
    return f"sqlite:///{Path(chosen).expanduser() if chosen else default_file()}"


SPACE_STORAGE = Path("/data")  # a Hugging Face Space's persistent storage, where the owner bought it


def default_file() -> Path:
    """The cache folder's ``runs.sqlite``; on a Space with persistent storage, ``/data``'s, since a
    Space's own disk is wiped at every restart and the history, the share links and the arena's votes
    with it."""
    if settings.on_space() and SPACE_STORAGE.is_dir() and os.access(SPACE_STORAGE, os.W_OK):
        return SPACE_STORAGE / "phi-playground" / "runs.sqlite"
    from playground import models

    return models.cache_root() / "runs.sqlite"


RETRY_S = 30.0  # a database that could not be opened is not tried again sooner (each run would wait)
CONNECT_TIMEOUT_S = 5
_failed: dict[str, tuple[float, str]] = {}


def engine(address: str | None = None) -> sa.Engine:
    address = address or url()
    if address is None:
        raise RecordError("recording is off (PLAYGROUND_DB=off)")
    with _lock:
        found = _engines.get(address)
        failed = _failed.get(address)
    if found is not None:
        return found
    if failed is not None and time.monotonic() - failed[0] < RETRY_S:
        raise RecordError(failed[1])
    try:
        made = _connect(address)  # outside the lock: one slow database never queues the others
    except RecordError as exc:
        with _lock:
            _failed[address] = (time.monotonic(), str(exc))
        raise
    with _lock:
        _failed.pop(address, None)
        found = _engines.setdefault(address, made)
    if found is not made:
        made.dispose()
    return found


def _connect(address: str) -> sa.Engine:
    try:
        if address.startswith("sqlite:///"):
            file = address.removeprefix("sqlite:///")
            if not file.startswith(("file:", ":memory:")):  # a plain path (a "file:" URI is SQLite's to open)
                Path(file).expanduser().parent.mkdir(parents=True, exist_ok=True)
            made = sa.create_engine(address, connect_args={"timeout": 10})

            @sa.event.listens_for(made, "connect")
            def _wal(connection: Any, _: Any) -> None:
                cursor = connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.close()
        else:
            made = sa.create_engine(address, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
        metadata.create_all(made)
        return made
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        raise RecordError(f"the run database cannot be opened: {reason(exc)}") from None


def reason(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    return secrets.redact(text)[:200]


def session_key(session: str) -> str:
    return hashlib.sha256(session.encode()).hexdigest()[:32]


def column_entry(column: Column) -> dict[str, Any]:
    """What a replay needs of one column: its target, text, each text event's offset and length."""
    timeline = column.timeline
    sent = timeline.sent
    return {
        "events": [[round(d.at - sent, 6), d.chars, d.tokens] for d in timeline.deltas] if sent is not None else [],
        "ended": None if sent is None or timeline.ended is None else round(timeline.ended - sent, 6),
        "prep": None if sent is None else round(sent - timeline.started, 6),
        "status": column.status,
        "finish_reason": column.finish_reason,
    }


def replayable(document: dict[str, Any], columns: list[Column], now: float | None = None) -> dict[str, Any]:
    """``document`` with what a replay needs (``parse_export`` checks it): the format, when, and each
    column's timeline. Recorded so, and so in a run's JSON download, which can be imported."""
    return {**document, "format": FORMAT, "recorded_at": time.time() if now is None else now,
            "timelines": [column_entry(c) for c in columns]}


def record(document: dict[str, Any], columns: list[Column], session: str, now: float | None = None,
           private: tuple[str, ...] = (), keys: Iterable[str] = ()) -> str:
    """Store a finished run; its id. ``private``: what a visitor typed that a shared run must not
    show (their own endpoint's URL), replaced wherever it appears; ``keys``: the keys they typed,
    blanked. Raises RecordError (never anything else) when it cannot."""
    now = time.time() if now is None else now
    run_id = stdlib_secrets.token_urlsafe(16)
    stored = replayable(document, columns, now)

    hidden = [v for v in private if v and len(v) >= 4]
    hidden += [host for v in hidden if (host := urllib.parse.urlsplit(v).hostname) and len(host) >= 4]
    own = tuple(keys)

    def clean(text: str) -> str:
        for value in sorted(set(hidden), key=len, reverse=True):  # the whole URL before its host alone
            text = text.replace(value, "(your endpoint)")
        return secrets.redact(text, own)

    # value by value, not over the JSON text: a secret that matched a piece of JSON's syntax would
    # leave a record that no longer parses
    text = json.dumps(map_strings(stored, clean), ensure_ascii=False)
    row = {"id": run_id, "session": session_key(session), "created": now,
           "prompt": clean(document["prompt"])[:10_000],
           "targets": ",".join(r["id"] for r in document["results"]), "document": text}
    try:
        with engine().begin() as connection:
            connection.execute(runs.insert().values(**row))
            _prune(connection, now)
    except RecordError:
        raise
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        raise RecordError(f"this run was not recorded: {reason(exc)}") from None
    return run_id


def map_strings(value: Any, clean: Callable[[str], str]) -> Any:
    """``value`` with ``clean`` applied to every string in it (the keys of its objects are the format's)."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {k: map_strings(v, clean) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [map_strings(v, clean) for v in value]
    return value


def _prune(connection: sa.Connection, now: float) -> None:
    connection.execute(runs.delete().where(runs.c.created < now - settings.keep_days() * 86400))
    keep = settings.keep_runs()
    cutoff = connection.execute(sa.select(runs.c.created).order_by(runs.c.created.desc())
                                .offset(keep).limit(1)).scalar()
    if cutoff is not None:
        connection.execute(runs.delete().where(runs.c.created <= cutoff))


def recent(session: str | None, search: str = "", limit: int = 50) -> list[dict[str, Any]]:
    """The newest runs (of one session, or everyone's for ``None``), matching ``search`` in the
    prompt or a target id: id, when, prompt, targets."""
    query = sa.select(runs.c.id, runs.c.created, runs.c.prompt, runs.c.targets).order_by(runs.c.created.desc())
    if session is not None:
        query = query.where(runs.c.session == session_key(session))
    if search.strip():
        typed = search.strip()[:200].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{typed}%"  # what was typed, literally: % and _ are not wildcards here
        query = query.where(sa.or_(runs.c.prompt.ilike(pattern, escape="\\"),
                                   runs.c.targets.ilike(pattern, escape="\\")))
    try:
        with engine().connect() as connection:
            rows = connection.execute(query.limit(limit)).mappings().all()
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        raise RecordError(f"the run history cannot be read: {reason(exc)}") from None
    return [dict(row) for row in rows]


def load(run_id: str, session: str | None = None) -> dict[str, Any]:
    """A recorded run's document; with ``session``, only one of that session's runs."""
    query = sa.select(runs.c.document).where(runs.c.id == str(run_id)[:64])
    if session is not None:
        query = query.where(runs.c.session == session_key(session))
    try:
        with engine().connect() as connection:
            text = connection.execute(query).scalar()
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        raise RecordError(f"the run cannot be read: {reason(exc)}") from None
    if text is None:
        raise RecordError(f"no recorded run {str(run_id)[:64]!r}" + (" of this session" if session else ""))
    return json.loads(text)


def read_export(path: Path) -> dict[str, Any]:
    """A run file on disk, checked (``parse_export``); RecordError says what is wrong with it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"not a run file: not UTF-8 text (invalid byte at offset {exc.start})") from None
    except OSError as exc:
        raise RecordError(f"cannot be read: {exc}") from None
    return parse_export(text)


def parse_export(text: str) -> dict[str, Any]:
    """An exported run file, checked: what a replay reads is there, with the right shapes and
    finite times (a file from elsewhere is untrusted)."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise RecordError(f"not a run file: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise RecordError("not a run file of this playground (no \"format\": 1)")
    if not isinstance(document.get("prompt"), str) or not isinstance(document.get("parameters", {}), dict) \
            or not isinstance(document.get("system") or "", str):
        raise RecordError("a run file needs its prompt (text) and its parameters")
    at = document.get("recorded_at")
    if at is not None and not (isinstance(at, (int, float)) and 0 <= at < 1e11):
        raise RecordError("a run file's recorded_at must be a Unix time")
    results, timelines = document.get("results"), document.get("timelines")
    if not isinstance(results, list) or not isinstance(timelines, list) or len(results) != len(timelines) \
            or not 1 <= len(results) <= 6:
        raise RecordError("a run file needs 1 to 6 results, each with its timeline")
    for result, timeline in zip(results, timelines):
        if not isinstance(result, dict) or not isinstance(result.get("text"), str) \
                or not isinstance(timeline, dict) or not isinstance(timeline.get("events"), list):
            raise RecordError("a run file's result needs its text and its timeline's events")
        ended = timeline.get("ended")
        if ended is not None and not _seconds(ended):
            raise RecordError("a run file's end must be a number of seconds from 0 to a day")
        for event in timeline["events"]:
            if not (isinstance(event, list) and len(event) == 3 and _seconds(event[0])
                    and isinstance(event[1], int) and 0 <= event[1] <= 1_000_000
                    and (event[2] is None or (isinstance(event[2], int) and 0 <= event[2] <= 1_000_000))):
                raise RecordError("a run file's event must be [seconds, characters, tokens or null]")
    return document


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 86_400
