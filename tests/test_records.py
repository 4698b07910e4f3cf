"""Recorded runs in a real database: SQLite files (read back exactly, across a restart, pruned,
degrading to a notice when the database cannot take a run), a real PostgreSQL on loopback with two
processes writing at once and two app processes voting in one room through their UIs' API, and
replays at the recorded pace."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sse_server import Script, ScriptedServer

from playground import records
from playground.catalog import Target
from playground.replay import Replay
from playground.report import run_document
from playground.request import ChatRequest, build_messages, make_params
from playground.runner import Job, run_to_end

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("close_clients")


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    scripts = {"paced": Script(tokens=25, ttft_s=0.15, interval_s=0.03),
               "cut": Script(tokens=30, interval_s=0.01, fault="drop", fault_after=5)}
    with ScriptedServer(scripts) as srv:
        yield srv


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "runs.sqlite"
    monkeypatch.setenv("PLAYGROUND_DB", str(path))
    return path


async def a_run(server: ScriptedServer, models: tuple[str, ...] = ("paced", "cut")) -> tuple[dict[str, Any], list]:
    targets = [Target(id=f"t-{m}", label=f"scripted {m}", backend="openai", model=m, base_url=server.base_url)
               for m in models]
    request = ChatRequest(build_messages("Tell me a story.", "Be brief."), make_params(temperature=0.0))
    columns = await run_to_end([Job(t, request) for t in targets])
    return run_document("Tell me a story.", "Be brief.", request.params, columns), columns


async def test_a_run_is_read_back_exactly_and_survives_a_restart(server, db: Path, clean_env) -> None:
    document, columns = await a_run(server)
    run_id = records.record(document, columns, "session-a")
    back = records.load(run_id, "session-a")
    assert {k: back[k] for k in document} == json.loads(json.dumps(document))  # every field, as exported
    assert [t["status"] for t in back["timelines"]] == ["done", "error"]  # errors are recorded too
    events = back["timelines"][0]["events"]
    assert [e[1] for e in events] and sum(e[1] for e in events) == len(back["results"][0]["text"])
    sent = columns[0].timeline.sent
    assert [e[0] for e in events] == [round(d.at - sent, 6) for d in columns[0].timeline.deltas]
    with pytest.raises(records.RecordError, match="of this session"):
        records.load(run_id, "session-b")  # another session cannot open it by id
    code = ("from playground import records; d = records.load(%r, 'session-a'); "
            "print(d['prompt'], len(d['results']))" % run_id)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=clean_env(PLAYGROUND_DB=str(db)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Tell me a story. 2"  # a new process (the app restarted) reads it
    [row] = records.recent("session-a", search="story")
    assert row["id"] == run_id and row["targets"] == "t-paced,t-cut"
    assert records.recent("session-a", search="nothing like it") == [] and records.recent("session-b") == []


async def test_old_runs_and_runs_beyond_the_cap_are_pruned(server, db: Path, monkeypatch) -> None:
    document, columns = await a_run(server, ("paced",))
    now = time.time()
    old = records.record(document, columns, "s", now=now - 40 * 86400)
    kept = [records.record(document, columns, "s", now=now + i) for i in range(3)]
    assert [r["id"] for r in records.recent("s")] == kept[::-1]  # 40 days old: gone (default 30)
    with pytest.raises(records.RecordError):
        records.load(old)
    monkeypatch.setenv("PLAYGROUND_KEEP_RUNS", "2")
    newest = records.record(document, columns, "s", now=now + 10)
    assert [r["id"] for r in records.recent("s")] == [newest, kept[2]]


async def test_a_database_that_cannot_take_the_run_fails_the_recording_not_the_run(
        server, tmp_path: Path, monkeypatch) -> None:
    from playground.ui_stream import _record, results_values

    document, columns = await a_run(server, ("paced",))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PLAYGROUND_DB", str(blocker / "runs.sqlite"))  # cannot be created
    recorded = _record(document, columns, "s")
    assert recorded.run_id is None and recorded.message.startswith("⚠ the run database cannot be opened")
    assert recorded.failed
    with pytest.warns(UserWarning, match="This run was not recorded .*cannot be opened"):  # a toast on the page
        values = results_values(("table", None, None, [], None, recorded))
    assert values[-2] == recorded.message  # the History tab's line says it too

    read_only = tmp_path / "read-only.sqlite"
    monkeypatch.setenv("PLAYGROUND_DB", str(read_only))
    records.record(document, columns, "s")  # the file and its table exist
    monkeypatch.setenv("PLAYGROUND_DB", f"sqlite:///file:{read_only}?mode=ro&uri=true")  # as a read-only mount
    recorded = _record(document, columns, "s")
    assert recorded.run_id is None and "readonly" in recorded.message.replace("read-only", "readonly")

    full = tmp_path / "full.sqlite"
    monkeypatch.setenv("PLAYGROUND_DB", str(full))
    engine = records.engine()

    @sa.event.listens_for(engine, "connect")
    def tiny(connection: Any, _: Any) -> None:
        connection.execute("PRAGMA max_page_count = 8")  # a disk with 32 KB left

    engine.dispose()
    big = {**document, "prompt": "x" * 200_000}
    recorded = _record(big, columns, "s")
    assert recorded.run_id is None and "full" in recorded.message and "not recorded" in recorded.message

    monkeypatch.setenv("PLAYGROUND_DB", "off")
    recorded = _record(document, columns, "s")
    assert (recorded.run_id, recorded.failed) == (None, False) and "off" in recorded.message  # chosen: no toast


async def test_a_replay_releases_each_event_at_its_recorded_offset_and_gives_the_recorded_figures(
        server, db: Path) -> None:
    document, columns = await a_run(server, ("paced",))
    back = records.load(records.record(document, columns, "s"))
    replay = Replay(back, 1.0)
    start = time.perf_counter()
    appeared: list[float] = []
    async for frame in replay.frames():
        now = time.perf_counter() - start
        appeared += [now] * (len(frame[0].timeline.deltas) - len(appeared))
    offsets = [e[0] for e in back["timelines"][0]["events"]]
    lateness = [a - o for a, o in zip(appeared, offsets)]
    assert len(appeared) == len(offsets) and min(lateness) >= 0 and max(lateness) < 0.05, lateness
    live, replayed = columns[0].metrics(), frame[0].metrics()
    assert replayed.ttft_s == pytest.approx(live.ttft_s, abs=1e-5)
    assert replayed.decode_tokens_per_s == pytest.approx(live.decode_tokens_per_s, rel=1e-4)
    assert (replayed.output_tokens, replayed.tokens_source) == (live.output_tokens, live.tokens_source)
    assert frame[0].text == columns[0].text and frame[0].status == "done"

    started = time.perf_counter()
    async for frame in Replay(back, None).frames():
        pass
    assert time.perf_counter() - started < 0.5 and frame[0].text == columns[0].text  # "instant"


def test_an_exported_run_file_is_checked_before_a_replay(tmp_path: Path) -> None:
    for text, message in (("{", "not a run file"), ('{"format": 2}', "no \"format\": 1"),
                          ('{"format": 1, "prompt": "p", "results": [], "timelines": []}', "1 to 6 results"),
                          ('{"format": 1, "prompt": "p", "results": [{"text": "ab"}], '
                           '"timelines": [{"events": [[Infinity, 1, 1]]}]}', "seconds, characters"),
                          ('{"format": 1, "prompt": "p", "results": [{"text": "ab"}], '
                           '"timelines": [{"events": [[0.1, 1, "x"]]}]}', "seconds, characters"),
                          ('{"format": 1, "prompt": 7, "results": [{"text": "ab"}], "timelines": [{"events": []}]}',
                           "needs its prompt"),
                          ('{"format": 1, "prompt": "p", "recorded_at": 1e300, "results": [{"text": "ab"}], '
                           '"timelines": [{"events": []}]}', "Unix time")):
        with pytest.raises(records.RecordError, match=message):
            records.parse_export(text)


async def test_the_command_line_replays_an_exported_file(server, db: Path, tmp_path: Path, clean_env) -> None:
    document, columns = await a_run(server, ("paced",))
    back = records.load(records.record(document, columns, "s"))
    path = tmp_path / "run.json"
    path.write_text(json.dumps(back), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "playground", "replay", str(path), "--speed", "4"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=clean_env(PLAYGROUND_DB="off"))
    assert done.returncode == 0, done.stderr
    assert columns[0].text in done.stdout and "-- done · TTFT " in done.stdout


# --- PostgreSQL ----------------------------------------------------------------------------------
PG_BIN = Path("/usr/lib/postgresql")


def _pg_tool(name: str) -> str | None:
    found = sorted(PG_BIN.glob(f"*/bin/{name}"))
    return str(found[-1]) if found else shutil.which(name)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A real PostgreSQL (Debian's package) on 127.0.0.1 and a free port; always stopped."""
    from conftest import free_loopback_port

    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no PostgreSQL (apt-get install postgresql)")
    # not under pytest's root-only temp folder: PostgreSQL's own user must reach it
    folder = Path(tempfile.mkdtemp(prefix="playground-pg-"))
    data, port = folder / "data", free_loopback_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: as its own user
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    try:
        for step in ([initdb, "-D", str(data), "-A", "trust", "-U", "postgres"],
                     [pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "-t", "60", "-o",
                      f"-h 127.0.0.1 -p {port} -k {folder}", "start"]):
            done = subprocess.run([*as_user, *step], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, (step[0], done.stdout[-1500:], done.stderr[-1500:])
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


WRITER = """
import json, sys
from playground import arena, records
document = json.loads(sys.stdin.read())
answers = [{"text": "x", "ttft_s": 0.1}, {"text": "y", "ttft_s": 0.2}]
for i in range(25):
    records.record(document, [], "workshop-%s" % sys.argv[1])
    battle = arena.record_battle("conference", "voter-%s-%d" % (sys.argv[1], i), "p", ("a", "b"), answers, [])
    arena.vote(battle, "a" if i % 2 else "tie")
print("ok")
"""


async def test_postgresql_takes_runs_and_votes_from_two_processes_at_once(server, postgres: str, monkeypatch,
                                                                clean_env) -> None:
    monkeypatch.setenv("PLAYGROUND_DB", postgres)
    document, columns = await a_run(server, ("paced",))
    run_id = records.record(document, columns, "s")
    assert records.load(run_id)["results"][0]["text"] == columns[0].text
    env = clean_env(PLAYGROUND_DB=postgres)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(n)], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in (1, 2)]
    try:
        outs = [w.communicate(json.dumps(document), timeout=120) for w in writers]
    finally:
        for w in writers:
            w.kill()
    assert [w.returncode for w in writers] == [0, 0], [o[1][-1000:] for o in outs]
    assert len(records.recent("workshop-1", limit=100)) == 25 and len(records.recent("workshop-2", limit=100)) == 25
    from playground import arena

    board = arena.standings("conference")  # two replicas' votes on one leaderboard
    assert board["votes"] == 50 and [r["votes"] for r in board["ratings"]] == [50, 50]


APP = """
import sys
from playground.catalog import Catalog, Target
from playground.settings import Settings
from playground.ui import build_ui, launch_options
base_url, port = sys.argv[1], int(sys.argv[2])
targets = [Target(id=t, label="scripted " + t, backend="openai", model="paced", base_url=base_url)
           for t in ("t-a", "t-b", "t-c")]
settings = Settings(host="127.0.0.1", port=None, columns=2, default_targets=[], concurrency=8, catalog=None)
demo = build_ui(Catalog(targets=targets, defaults=["t-a"]), settings)
demo.launch(**launch_options(server_name="127.0.0.1", server_port=port, quiet=True))
"""


def test_two_app_processes_on_one_postgresql_share_the_rooms_pool_and_lose_no_vote(
        server, postgres: str, monkeypatch, clean_env, tmp_path: Path) -> None:
    """Two replicas of the app (real processes, real UI, one PostgreSQL), their arenas voted in at
    once through the API, as a conference's balancer would spread its room."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client

    from browser_flow import wait_http_ok
    from conftest import free_loopback_port
    from playground import arena

    monkeypatch.setenv("PLAYGROUND_DB", postgres)
    env = clean_env(PLAYGROUND_DB=postgres, PLAYGROUND_ARENA_TARGETS="t-a,t-b,t-c")
    ports = [free_loopback_port() for _ in range(2)]
    logs = [tmp_path / f"app-{n}.log" for n in range(2)]
    apps = []
    try:
        for port, log in zip(ports, logs):
            with log.open("w") as out:  # the child keeps its own copy of the descriptor
                apps.append(subprocess.Popen([sys.executable, "-c", APP, server.base_url, str(port)], cwd=ROOT,
                                             env=env, stdout=subprocess.DEVNULL, stderr=out))
        clients = []
        for app, port, log in zip(apps, ports, logs):
            wait_http_ok(f"http://127.0.0.1:{port}/", app, 120, log)
            clients.append(Client(f"http://127.0.0.1:{port}/", verbose=False))
        clients[0].predict("replicas", ["t-a", "t-c"], api_name="/arena_pool")  # the host, on the first replica

        def voter(n: int) -> str:
            api = Client(clients[n % 2].src, verbose=False)  # a session of its own, on one replica or the other
            for i in range(3):
                api.predict(f"question {n}.{i}", "replicas", api_name="/arena_battle")
                api.predict(api_name="/arena_vote_a" if (n + i) % 2 else "/arena_vote_tie")
            return "ok"

        with ThreadPoolExecutor(6) as pool:
            assert list(pool.map(voter, range(6))) == ["ok"] * 6
        board = arena.standings("replicas")
        assert board["votes"] == 18 and sorted(r["votes"] for r in board["ratings"]) == [18, 18]
        assert {r["target"] for r in board["ratings"]} == {"t-a", "t-c"}  # both replicas drew from the host's pool
        summary, _, _ = clients[0].predict("replicas", api_name="/leaderboard")
        assert "18 votes" in summary  # either replica shows the whole room
    finally:
        for app in apps:
            app.kill()
            app.wait(timeout=30)


async def test_stopping_one_replayed_column_ends_it_at_once_not_at_its_next_recorded_event() -> None:
    document = {"format": 1, "prompt": "p", "recorded_at": 0,
                "results": [{"id": "a", "text": "one two", "output_tokens": 2, "tokens_source": "counted"},
                            {"id": "b", "text": "x", "output_tokens": 1, "tokens_source": "counted"}],
                "timelines": [{"events": [[0.05, 3, 1], [5.0, 4, 1]], "ended": 5.0, "status": "done"},
                              {"events": [[0.05, 1, 1]], "ended": 0.3, "status": "done"}]}
    replay = Replay(records.parse_export(json.dumps(document)), 1.0)
    pressed = None
    async for frame in replay.frames():
        if pressed is None and frame[0].text:
            pressed = time.perf_counter()
            await asyncio.to_thread(replay.stop_column, 0)
        if frame[0].final:
            break
    assert pressed is not None and time.perf_counter() - pressed < 0.5  # not after the recorded 5 s gap
    assert frame[0].status == "stopped" and frame[0].text == "one"
    assert frame[0].timeline.ended >= frame[0].timeline.deltas[-1].at


async def test_a_visitors_own_endpoint_never_reaches_the_record(server, db: Path) -> None:
    document, columns = await a_run(server, ("paced",))
    url = "https://my-private-host.example/v1"
    document["results"][0]["error"] = f"cannot connect to {url}/chat/completions"
    run_id = records.record(document, columns, "s", private=(url,))
    stored = json.dumps(records.load(run_id))
    assert url not in stored and "(your endpoint)/chat/completions" in stored


async def test_a_visitors_endpoint_host_alone_is_hidden_too(server, db: Path) -> None:
    document, columns = await a_run(server, ("paced",))
    document["results"][0]["error"] = "Cannot connect to host my-private-host.example:443 ssl:default"
    run_id = records.record(document, columns, "s", private=("https://my-private-host.example/v1",))
    assert "my-private-host" not in json.dumps(records.load(run_id))


async def test_a_replay_keeps_the_recorded_notices_and_error_bar_and_ignores_figures_of_the_wrong_type(
        server, db: Path) -> None:
    from playground.events import ServerTimings
    from playground.report import result_entry

    document, columns = await a_run(server, ("paced",))
    result = document["results"][0]
    result.update(notices=["text only: image not sent", 7], clock_lag_ms=35.0, stamped_in="measurement process",
                  server={"decode_tokens_per_s": "fast", "threads": 2.5, "load_s": 1.5, "total_s": float("nan")})
    back = records.load(records.record(document, columns, "s"))
    replay = Replay(back, None)
    async for _ in replay.frames():
        pass
    [column] = replay.columns
    assert column.notices == ["text only: image not sent"]
    assert column.timing_uncertain and result_entry(column)["clock_lag_ms"] == 35.0
    assert result_entry(column)["stamped_in"] == "measurement process"
    assert column.server == ServerTimings(load_s=1.5)

    del result["stamped_in"]  # recorded before results said where: not claimed to be the app's
    older = Replay(records.load(records.record(document, columns, "s")), None)
    async for _ in older.frames():
        pass
    assert result_entry(older.columns[0])["stamped_in"] == "unknown"


async def test_another_visitors_typed_key_neither_breaks_nor_blanks_a_record(server, db: Path) -> None:
    from playground import secrets

    document, columns = await a_run(server, ("paced",))
    secrets.remember('"text":')  # what some other visitor typed as a key, and is kept for the logs
    secrets.remember("story")
    try:
        back = records.load(records.record(document, columns, "s"))  # parses
        assert back["prompt"] == "Tell me a story." and back["results"][0]["text"] == document["results"][0]["text"]
        assert "***" in secrets.redact_log('{"text": "a story"}')  # the operator's log still blanks them
        mine = records.load(records.record(document, columns, "s", keys=("story",)))  # the visitor's own run
        assert mine["prompt"] == "Tell me a ***." and json.dumps(mine).count("story") == 0
    finally:
        secrets.forget('"text":')
        secrets.forget("story")


def test_on_a_space_with_persistent_storage_runs_go_to_data(tmp_path: Path, monkeypatch) -> None:
    from playground import models

    storage = tmp_path / "data"
    monkeypatch.setattr(records, "SPACE_STORAGE", storage)
    monkeypatch.delenv("PLAYGROUND_DB", raising=False)
    monkeypatch.setenv("SPACE_ID", "someone/phi-playground")
    cache = f"sqlite:///{models.cache_root() / 'runs.sqlite'}"
    assert records.url() == cache  # a Space without persistent storage: its own disk
    storage.mkdir()
    assert records.url() == f"sqlite:///{storage / 'phi-playground' / 'runs.sqlite'}"
    storage.chmod(0o500)  # mounted read-only: not a place to write
    try:
        if not os.access(storage, os.W_OK):  # root writes anyway
            assert records.url() == cache
    finally:
        storage.chmod(0o700)
    monkeypatch.delenv("SPACE_ID")
    assert records.url() == cache  # not a Space: the cache folder, even where a /data exists
    monkeypatch.setenv("SPACE_ID", "someone/phi-playground")
    monkeypatch.setenv("PLAYGROUND_DB", str(tmp_path / "chosen.sqlite"))
    assert records.url() == f"sqlite:///{tmp_path / 'chosen.sqlite'}"  # the owner's choice wins


async def test_in_public_mode_a_visitor_opens_and_shares_only_their_own_runs_and_the_owner_all(
        server, db: Path, monkeypatch) -> None:
    import gradio as gr

    from playground.public import Policy
    from playground.ui import EVERYONE, THIS_SESSION, recorded_run, sees_everyone

    document, columns = await a_run(server, ("paced",))
    run_id = records.record(document, columns, "visitor-a")
    space, local = Policy(public=True), Policy(public=False)
    assert recorded_run(space, run_id, None, "visitor-a")["prompt"] == "Tell me a story."
    with pytest.raises(gr.Error, match="of this session"):  # Open, Replay, Export and Share all go through it
        recorded_run(space, run_id, None, "visitor-b")
    with pytest.raises(gr.Error, match="only the owner"):
        sees_everyone(space, EVERYONE, None)
    assert sees_everyone(space, THIS_SESSION, None) is False
    monkeypatch.setenv("PLAYGROUND_OWNER_KEY", "owner-secret-1234\n")  # pasted from a file
    with pytest.raises(gr.Error, match="only the owner"):
        sees_everyone(space, EVERYONE, "owner-secret-123")
    assert sees_everyone(space, EVERYONE, " owner-secret-1234 ")
    assert recorded_run(space, run_id, "owner-secret-1234", "visitor-b")["prompt"] == "Tell me a story."
    assert recorded_run(local, run_id, None, "visitor-b")["prompt"] == "Tell me a story."  # the owner's machine
    with pytest.raises(gr.Error, match="pick a run"):
        recorded_run(space, "  ", None, "visitor-a")
    from playground import secrets

    later = time.monotonic() + 1000  # past the minute of the miss above
    for n in range(secrets.OWNER_TRIES_PER_MINUTE):  # someone guessing
        assert not secrets.is_owner(f"guess-{n}", now=later + n)
    assert not secrets.is_owner("owner-secret-1234", now=later + 10)  # not even the right key, for the minute
    assert secrets.is_owner("owner-secret-1234", now=later + 70)


async def test_a_replay_at_twice_the_pace_ticks_its_live_figures_in_recorded_time() -> None:
    """At 2× the text arrives twice as fast, and the live E2E reads the recorded run's time, not the
    wall's (which would read half)."""
    events = [[0.2 * (n + 1), 1, 1] for n in range(8)]  # a token every 0.2 s of the recording
    document = {"format": 1, "prompt": "p", "recorded_at": 0,
                "results": [{"id": "a", "text": "abcdefgh", "output_tokens": 8, "tokens_source": "counted"}],
                "timelines": [{"events": events, "ended": 1.6, "status": "done"}]}
    replay = Replay(records.parse_export(json.dumps(document)), 2.0)
    seen: list[tuple[float, float]] = []
    async for frame in replay.frames():
        column = frame[0]
        if not column.final and len(column.timeline.deltas) >= 4:
            before = time.perf_counter() - column.timeline.sent
            live = column.metrics(replay.now())
            seen.append((before, live.e2e_s or 0.0, time.perf_counter() - column.timeline.sent))
    assert seen, "no frame mid-way"
    before, e2e, after = seen[0]
    assert e2e >= 0.8 - 0.005  # the fourth token's recorded moment has passed, in recorded time
    assert 2 * before - 1e-3 <= e2e <= 2 * after + 1e-3  # twice the wall's time since the replay began
    final = frame[0].metrics()
    assert final.e2e_s == pytest.approx(1.6, abs=1e-6) and final.ttft_s == pytest.approx(0.2, abs=1e-6)
