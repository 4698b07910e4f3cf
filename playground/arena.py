"""The blind arena's state: battles and their votes in the run database (``records``), per room.

A battle is one prompt answered by two targets of the room's pool, shown as A and B; their names
stay on the server (in the session's state and here) until the vote. Pairs are drawn so that every
pair gets votes: among the pairs of the pool, one of those with the fewest battles in the room,
at random. One vote per battle, taken atomically (an UPDATE of a battle that has none), so
voters at once never lose or double a vote. An answer that names a model ("As Phi-3, …") gives
away who wrote it: its vote still counts, flagged. A vote on a battle in which an answer failed
is kept but not rated.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import random
import re
import secrets as stdlib_secrets
import statistics
import threading
import time
from typing import Any

import sqlalchemy as sa

from playground import ratings, records, secrets

VOTES = {"a": "A is better", "b": "B is better", "tie": "Tie", "bad": "Both are bad"}
ROOM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
DEFAULT_ROOM = "lobby"
#: model families whose name in an answer gives its writer away
FAMILIES = ("phi", "smollm", "gpt", "llama", "qwen", "mistral", "gemma", "claude", "deepseek", "granite")

battles = sa.Table(
    "battles", records.metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("room", sa.String(40), nullable=False, index=True),
    sa.Column("session", sa.String(32), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("target_a", sa.String(80), nullable=False),
    sa.Column("target_b", sa.String(80), nullable=False),
    sa.Column("answers", sa.Text, nullable=False),  # JSON: both texts and both metrics
    sa.Column("vote", sa.String(8)),
    sa.Column("flagged", sa.Boolean, nullable=False, default=False),
    sa.Column("voted_at", sa.Float),
)
#: the pool the host picked for a room in the page (PLAYGROUND_ARENA_TARGETS is the default for all)
room_pools = sa.Table(
    "arena_rooms", records.metadata,
    sa.Column("room", sa.String(40), primary_key=True),
    sa.Column("pool", sa.Text, nullable=False),  # JSON: target ids
    sa.Column("updated", sa.Float, nullable=False),
)


class ArenaError(Exception):
    """A battle or a vote that cannot be taken; the message says why, fit to show."""


_ready: set[int] = set()


def _engine() -> sa.Engine:
    """The run database, with the arena's table (created on first use, whatever opened it first)."""
    made = records.engine()
    if id(made) not in _ready:
        records.metadata.create_all(made, tables=[battles, room_pools])
        _ready.add(id(made))
    return made


def room_name(value: str | None) -> str:
    text = (value or "").strip()
    if not text:
        return DEFAULT_ROOM
    if not ROOM.match(text):
        raise ArenaError(f"room: letters, digits, - and _, up to 40 (got {text[:40]!r})")
    return text


def set_pool(room: str, target_ids: list[str]) -> None:
    """The room's pool, for everyone in it; an empty list goes back to the default."""
    for attempt in range(2):  # two hosts saving at once: the loser of the insert saves again
        try:
            with _engine().begin() as connection:
                connection.execute(room_pools.delete().where(room_pools.c.room == room))
                if target_ids:
                    connection.execute(room_pools.insert().values(room=room, pool=json.dumps(target_ids),
                                                                  updated=time.time()))
            return
        except sa.exc.IntegrityError:
            if attempt:
                raise ArenaError("the room's pool was not saved: another host saved at the same moment") from None
        except (sa.exc.SQLAlchemyError, records.RecordError, OSError) as exc:
            raise ArenaError(f"the room's pool was not saved: {records.reason(exc)}") from None


def room_pool(room: str) -> list[str]:
    """The pool the host picked for the room; empty where none was picked."""
    try:
        with _engine().connect() as connection:
            found = connection.execute(sa.select(room_pools.c.pool).where(room_pools.c.room == room)).scalar()
        return [str(t) for t in json.loads(found)] if found else []
    except (sa.exc.SQLAlchemyError, records.RecordError, OSError, ValueError, TypeError):
        return []  # unreadable: the default pool


def _battle_counts(room: str) -> dict[frozenset[str], int]:
    query = (sa.select(battles.c.target_a, battles.c.target_b, sa.func.count())
             .where(battles.c.room == room).group_by(battles.c.target_a, battles.c.target_b))
    counts: dict[frozenset[str], int] = {}
    with _engine().connect() as connection:
        for a, b, n in connection.execute(query):
            counts[frozenset((a, b))] = counts.get(frozenset((a, b)), 0) + n
    return counts


def pick_pair(pool: list[str], room: str, rng: random.Random | None = None) -> tuple[str, str]:
    """Two different targets: a pair with the fewest battles in the room, in a random order."""
    rng = rng or random.Random()
    pairs = [frozenset(p) for p in itertools.combinations(sorted(set(pool)), 2)]
    if not pairs:
        raise ArenaError("the arena needs at least two targets that can run (the room's pool, else PLAYGROUND_ARENA_TARGETS)")
    try:
        counts = _battle_counts(room)
    except (sa.exc.SQLAlchemyError, records.RecordError, OSError):
        counts = {}
    fewest = min(counts.get(p, 0) for p in pairs)
    pair = list(rng.choice([p for p in pairs if counts.get(p, 0) == fewest]))
    rng.shuffle(pair)
    return pair[0], pair[1]


def gives_itself_away(text: str, names: list[str]) -> bool:
    """An answer that names a model family or one of the battle's targets."""
    lowered = text.lower()
    words = set(FAMILIES) | {n.lower() for n in names if len(n) >= 3}
    # a name as a word of its own ("Phi-3", "phi3", "SmolLM2"), not inside another ("philosophy")
    return any(re.search(rf"(?<![a-z]){re.escape(w)}(?![a-z])", lowered) for w in words)


def record_battle(room: str, session: str, prompt: str, targets: tuple[str, str], answers: list[dict[str, Any]],
                  names: list[str]) -> str:
    battle_id = stdlib_secrets.token_urlsafe(16)
    flagged = any(gives_itself_away(a.get("text") or "", names) for a in answers)
    row = {"id": battle_id, "room": room, "session": records.session_key(session), "created": time.time(),
           "prompt": secrets.redact(prompt)[:10_000], "target_a": targets[0], "target_b": targets[1],
           "answers": json.dumps(records.map_strings(answers, secrets.redact), ensure_ascii=False), "vote": None, "flagged": flagged}
    try:
        with _engine().begin() as connection:
            connection.execute(battles.insert().values(**row))
    except (sa.exc.SQLAlchemyError, records.RecordError, OSError) as exc:
        raise ArenaError(f"the battle was not recorded: {records.reason(exc)}") from None
    return battle_id


def vote(battle_id: str, choice: str) -> dict[str, Any]:
    """Take the one vote of a battle; the battle (names, answers, flag) to reveal."""
    if choice not in VOTES:
        raise ArenaError(f"vote: one of {', '.join(VOTES)} (got {choice!r})")
    try:
        with _engine().begin() as connection:
            taken = connection.execute(battles.update().where(battles.c.id == battle_id, battles.c.vote.is_(None))
                                       .values(vote=choice, voted_at=time.time())).rowcount
            row = connection.execute(sa.select(battles).where(battles.c.id == battle_id)).mappings().first()
    except (sa.exc.SQLAlchemyError, records.RecordError, OSError) as exc:
        raise ArenaError(f"the vote was not recorded: {records.reason(exc)}") from None
    if row is None:
        raise ArenaError("no such battle")
    if not taken:
        raise ArenaError("this battle already has its vote")
    return {**dict(row), "answers": json.loads(row["answers"])}


def voted(room: str) -> list[dict[str, Any]]:
    query = (sa.select(battles).where(battles.c.room == room, battles.c.vote.is_not(None))
             .order_by(battles.c.voted_at))
    try:
        with _engine().connect() as connection:
            rows = connection.execute(query).mappings().all()
    except (sa.exc.SQLAlchemyError, records.RecordError, OSError) as exc:
        raise ArenaError(f"the room's votes cannot be read: {records.reason(exc)}") from None
    return [{**dict(r), "answers": json.loads(r["answers"])} for r in rows]


def _version(room: str) -> tuple[int, float]:
    """The room's vote count and its last vote's time: what a cached leaderboard is keyed on."""
    query = sa.select(sa.func.count(), sa.func.max(battles.c.voted_at)).where(
        battles.c.room == room, battles.c.vote.is_not(None))
    try:
        with _engine().connect() as connection:
            count, last = connection.execute(query).one()
    except (sa.exc.SQLAlchemyError, records.RecordError, OSError) as exc:
        raise ArenaError(f"the room's votes cannot be read: {records.reason(exc)}") from None
    return int(count), float(last or 0.0)


_boards: dict[tuple[str, int, float], dict[str, Any]] = {}
_boards_lock = threading.Lock()


def standings(room: str) -> dict[str, Any]:
    """The room's leaderboard: ratings with intervals, votes, the median TTFT and decode rate of
    each target in its battles, and the win-rate matrix. Cached per room until its next vote, and
    computed once per vote: 30 open leaderboards ticking after a vote wait for one fit, not 30."""
    key = (room, *_version(room))  # a leaderboard's tick reads two numbers while no one votes
    with _boards_lock:
        if key not in _boards:
            _boards[key] = _standings(room, voted(room))
            if len(_boards) > 200:
                for old in list(_boards)[:100]:
                    del _boards[old]
        return _boards[key]


def failed(row: dict[str, Any]) -> bool:
    """A battle in which an answer failed: its vote says which target was up, not which answered better."""
    return any(isinstance(a, dict) and a.get("status") == "error" for a in row["answers"])


def _standings(room: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    rated = [r for r in rows if not failed(r)]
    pairs = [(r["target_a"], r["target_b"], r["vote"]) for r in rated]
    speed: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        for target, answer in zip((r["target_a"], r["target_b"]), r["answers"]):
            figures = speed.setdefault(target, {"ttft_s": [], "decode_tokens_per_s": []})
            for name in figures:
                if isinstance(answer.get(name), (int, float)):
                    figures[name].append(answer[name])
    board = {
        "room": room,
        "votes": len(rows),
        "failed": len(rows) - len(rated),  # not in the ratings
        "flagged": sum(bool(r["flagged"]) for r in rated),
        "ratings": [{"target": r.target, "rating": r.rating, "ci_low": r.ci_low, "ci_high": r.ci_high, "votes": r.votes,
                     "median_ttft_s": _median(speed.get(r.target, {}).get("ttft_s")),
                     "median_decode_tokens_per_s": _median(speed.get(r.target, {}).get("decode_tokens_per_s"))}
                    for r in ratings.leaderboard(pairs)],
        "win_rates": ratings.win_rates(pairs),
    }
    return board


def _median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def votes_csv(room: str, prompts: bool = True) -> str:
    """The room's votes, one row each; ``prompts`` False (public mode): without what visitors typed."""
    from playground.report import csv_safe

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["battle", "room", "voted_at", "target_a", "target_b", "vote", "flagged", "failed"]
                    + (["prompt"] if prompts else []))
    for r in voted(room):  # failed: an answer failed, and the leaderboard leaves the vote out
        row = [r["id"], r["room"], r["voted_at"], r["target_a"], r["target_b"], r["vote"], r["flagged"], failed(r)]
        writer.writerow([csv_safe(v) for v in row + ([r["prompt"]] if prompts else [])])
    return out.getvalue()
