"""The blind arena: Bradley–Terry ratings against a hand-worked example, pairs that spread the votes,
rooms kept apart, 30 voters at once losing no vote, and names absent from everything the page
receives before the vote."""

from __future__ import annotations

import csv
import io
import json
import math
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sse_server import Script, ScriptedServer

from playground import arena, ratings


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "arena.sqlite"
    monkeypatch.setenv("PLAYGROUND_DB", str(path))
    return path


def test_bradley_terry_against_a_hand_worked_example() -> None:
    # A beats B 3 times in 4: P = 3/4, so R_A - R_B = 400 log10(3) = 190.85, centred on 1000
    fitted = ratings.fit([("A", "B", "a")] * 3 + [("A", "B", "b")])
    assert fitted["A"] - fitted["B"] == pytest.approx(400 * math.log10(3), abs=0.5)
    assert (fitted["A"] + fitted["B"]) / 2 == pytest.approx(1000)
    # a tie is half a win each: one win and one tie is 1.5 to 0.5, the same 3:1
    tied = ratings.fit([("A", "B", "a"), ("A", "B", "tie")])
    assert tied["A"] - tied["B"] == pytest.approx(400 * math.log10(3), abs=0.5)
    assert ratings.fit([("A", "B", "bad")] * 2) == pytest.approx({"A": 1000, "B": 1000})  # both bad: a tie
    # three targets in a strict order, each pair 2:1: the middle one sits at the average
    three = ratings.fit([("A", "B", "a"), ("A", "B", "a"), ("A", "B", "b"), ("B", "C", "a"), ("B", "C", "a"),
                         ("B", "C", "b"), ("A", "C", "a"), ("A", "C", "a"), ("A", "C", "b")])
    assert three["A"] > three["B"] > three["C"] and three["B"] == pytest.approx(1000, abs=1e-6)


def test_the_interval_holds_the_rating_and_is_reproducible() -> None:
    votes = [("A", "B", "a")] * 6 + [("A", "B", "b")] * 2 + [("B", "C", "a")] * 5 + [("A", "C", "tie")] * 3
    board = ratings.leaderboard(votes)
    assert [r.target for r in board] == ["A", "B", "C"]
    for r in board:
        assert r.ci_low <= r.rating <= r.ci_high
    assert ratings.leaderboard(votes) == board  # seeded
    assert board[0].votes == 11
    rates = ratings.win_rates(votes)
    assert rates["A"]["B"] == 0.75 and rates["B"]["A"] == 0.25 and rates["A"]["C"] == 0.5 and rates["A"]["A"] is None


def test_the_bootstrap_interval_against_the_binomial_worked_by_hand() -> None:
    # A beats B in 30 of 40 battles. A resample draws 40 battles with replacement, so A's wins in it
    # are Binomial(40, 3/4), and a fit of k wins in 40 puts A at 1000 + 200 log10(k / (40 - k)). The
    # 2.5th and 97.5th percentiles of 200 resamples then fall, as win counts, between the
    # binomial's 0.5 % and 5 % quantiles, and between its 95 % and 99.5 % ones.
    votes = [("A", "B", "a")] * 30 + [("A", "B", "b")] * 10
    a, b = ratings.leaderboard(votes)

    def wins(rating: float) -> float:  # the win count a rating of A stands for
        return 40 / (1 + 10 ** (-(rating - 1000) / 200))

    def quantile(q: float) -> int:
        cdf = 0.0
        for k in range(41):
            cdf += math.comb(40, k) * 0.75 ** k * 0.25 ** (40 - k)
            if cdf >= q:
                return k
        return 40

    assert (quantile(0.005), quantile(0.05), quantile(0.95), quantile(0.995)) == (23, 25, 34, 36)
    assert wins(a.rating) == pytest.approx(30, abs=0.01)
    assert 23 - 0.01 <= wins(a.ci_low) <= 25 + 0.01 and 34 - 0.01 <= wins(a.ci_high) <= 36 + 0.01
    assert (b.ci_low, b.ci_high) == pytest.approx((2000 - a.ci_high, 2000 - a.ci_low))  # B mirrors A


def test_pairs_spread_the_votes_and_rooms_stay_apart(db: Path) -> None:
    answers = [{"text": "x", "ttft_s": 0.1, "decode_tokens_per_s": 50.0}, {"text": "y", "ttft_s": 0.3,
                                                                           "decode_tokens_per_s": 20.0}]
    for _ in range(2):
        arena.vote(arena.record_battle("room-1", "s", "p", ("a", "b"), answers, []), "a")
    picks = {frozenset(arena.pick_pair(["a", "b", "c"], "room-1")) for _ in range(20)}
    assert frozenset(("a", "b")) not in picks  # the pair with votes waits for the others
    arena.vote(arena.record_battle("room-2", "s", "p", ("a", "c"), answers, []), "b")
    one, two = arena.standings("room-1"), arena.standings("room-2")
    assert one["votes"] == 2 and two["votes"] == 1
    assert [r["target"] for r in one["ratings"]] == ["a", "b"] and [r["target"] for r in two["ratings"]] == ["c", "a"]
    assert one["ratings"][0]["median_ttft_s"] == 0.1 and one["ratings"][1]["median_decode_tokens_per_s"] == 20.0
    assert "room-2" not in arena.votes_csv("room-1") and arena.votes_csv("room-1").count("\n") == 3
    with pytest.raises(arena.ArenaError, match="room: letters"):
        arena.room_name("../etc")


def test_a_vote_on_a_battle_with_a_failed_answer_is_kept_but_not_rated(db: Path) -> None:
    good = [{"text": "x", "status": "done"}, {"text": "y", "status": "done"}]
    broken = [{"text": "", "status": "error", "error": "401 unauthorized"}, {"text": "y", "status": "done"}]
    arena.vote(arena.record_battle("room-f", "s", "p", ("a", "b"), good, []), "a")
    for _ in range(3):  # b was up, a was not: that says nothing of which answers better
        arena.vote(arena.record_battle("room-f", "s", "p", ("a", "b"), broken, []), "b")
    board = arena.standings("room-f")
    assert board["votes"] == 4 and board["failed"] == 3
    assert [r["target"] for r in board["ratings"]] == ["a", "b"] and board["ratings"][0]["votes"] == 1
    exported = list(csv.DictReader(io.StringIO(arena.votes_csv("room-f"))))  # every vote, marked
    assert [row["failed"] for row in exported] == ["False", "True", "True", "True"]


def test_a_room_keeps_the_pool_its_host_picked(db: Path) -> None:
    assert arena.room_pool("room-1") == []  # none picked: the default pool
    arena.set_pool("room-1", ["a", "b"])
    arena.set_pool("room-2", ["c", "d"])
    arena.set_pool("room-1", ["a", "c"])  # picked again: replaced
    assert arena.room_pool("room-1") == ["a", "c"] and arena.room_pool("room-2") == ["c", "d"]
    arena.set_pool("room-2", [])
    assert arena.room_pool("room-2") == []


def test_thirty_voters_at_once_lose_no_vote_and_a_battle_takes_one(db: Path) -> None:
    answers = [{"text": "x"}, {"text": "y"}]
    ids = [arena.record_battle("workshop", f"s{i}", "p", ("a", "b"), answers, []) for i in range(30)]
    gate = threading.Barrier(30)
    failures: list[BaseException] = []

    def voter(battle: str, n: int) -> None:
        gate.wait(timeout=30)
        try:
            arena.vote(battle, "a" if n % 3 else "b")
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    threads = [threading.Thread(target=voter, args=(b, n)) for n, b in enumerate(ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures
    board = arena.standings("workshop")
    assert board["votes"] == 30 and board["ratings"][0]["votes"] == 30
    with pytest.raises(arena.ArenaError, match="already has its vote"):
        arena.vote(ids[0], "b")


def test_an_answer_that_names_a_model_is_flagged() -> None:
    assert arena.gives_itself_away("As Phi-3, I would say blue.", [])
    assert arena.gives_itself_away("I am SmolLM2, a small model.", [])
    assert arena.gives_itself_away("This is my-model speaking", ["my-model"])
    assert not arena.gives_itself_away("The sky is blue because of Rayleigh scattering.", ["t-a"])


# --- through the UI ---------------------------------------------------------------------------
@contextmanager
def arena_app(monkeypatch: pytest.MonkeyPatch, beta: Script | None = None, speed: bool = False
              ) -> Iterator[tuple[Any, ScriptedServer]]:
    """An app whose arena pool is alpha and beta by default (PLAYGROUND_ARENA_TARGETS); gamma is in
    the catalog for a room's own pool."""
    beta = beta or Script(tokens=8)
    from gradio_client import Client

    from playground.catalog import Catalog, Target
    from playground.settings import Settings
    from playground.ui import build_ui
    from tests.test_ui import launched

    with ScriptedServer({"m1": Script(tokens=6), "m2": beta, "m3": Script(tokens=4)}) as server:
        targets = [Target(id="secret-alpha", label="Codename Alpha", backend="openai", model="m1",
                          base_url=server.base_url),
                   Target(id="secret-beta", label="Codename Beta", backend="openai", model="m2",
                          base_url=server.base_url),
                   Target(id="secret-gamma", label="Codename Gamma", backend="openai", model="m3",
                          base_url=server.base_url)]
        monkeypatch.setenv("PLAYGROUND_ARENA_TARGETS", "secret-alpha,secret-beta")
        monkeypatch.setenv("PLAYGROUND_ARENA_SPEED", "1" if speed else "0")
        settings = Settings(host="127.0.0.1", port=None, columns=2, default_targets=[], concurrency=8, catalog=None)
        with launched(build_ui(Catalog(targets=targets, defaults=["secret-alpha"]), settings)) as demo:
            yield Client(demo.local_url, verbose=False), server


@pytest.fixture
def client(db: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, ScriptedServer]]:
    with arena_app(monkeypatch) as made:
        yield made


def test_names_stay_hidden_until_the_vote_and_the_leaderboard_counts_it(client) -> None:
    api, _ = client
    job = api.submit("Say something.", "lan-party", api_name="/arena_battle")
    job.result(timeout=60)
    frames = json.dumps(job.outputs())
    for secret in ("secret-alpha", "secret-beta", "Codename", "m1", "m2"):
        assert secret not in frames, secret  # not in any frame the page received
    assert "TTFT" not in frames and "tok/s" not in frames  # speed can give a model away: off unless the host asks
    final = job.outputs()[-1]
    assert final[0].startswith("t0") and final[1].startswith("t0") and "done" in final[2] and "done" in final[3]
    with urllib.request.urlopen(api.src.rstrip("/") + "/config", timeout=30) as response:
        config = json.loads(response.read())  # what every page load receives, fetched mid-battle
    arena_parts = [c for c in config["components"] if str(c.get("props", {}).get("elem_id", "")).startswith("arena-")
                   and c["props"]["elem_id"] != "arena-pool"]  # the pool lists every name by design, and no pair
    states = [c for c in config["components"] if c.get("type") == "state"]
    assert len(arena_parts) >= 9 and states
    for secret in ("secret-alpha", "secret-beta", "Codename"):
        assert secret not in json.dumps(arena_parts + states), secret
    revealed = api.predict(api_name="/arena_vote_a")
    reveal = json.dumps(revealed)
    assert "Codename Alpha" in reveal and "Codename Beta" in reveal and "You voted: A is better" in reveal
    summary, table, _ = api.predict("lan-party", api_name="/leaderboard")
    assert "1 vote." in summary and len(table["data"]) == 2
    with pytest.raises(Exception, match="No battle to vote on"):
        api.predict(api_name="/arena_vote_b")  # the battle had its one vote

    def revealed_pair() -> str:
        api.predict("Another?", "lan-party", api_name="/arena_battle")
        return json.dumps(api.predict(api_name="/arena_vote_tie"))

    from gradio_client import Client

    host = Client(api.src, verbose=False)  # another session: the room's pool is the room's, not a page's
    host.predict("lan-party", ["secret-alpha", "secret-gamma"], api_name="/arena_pool")
    reveal = revealed_pair()
    assert "Codename Gamma" in reveal and "Codename Alpha" in reveal and "Codename Beta" not in reveal
    assert arena.room_pool("other-room") == []
    host.predict("lan-party", ["secret-gamma"], api_name="/arena_pool")  # one is not a pool yet: the default
    reveal = revealed_pair()
    assert "Codename Alpha" in reveal and "Codename Beta" in reveal and "Codename Gamma" not in reveal


def test_speed_shows_only_when_the_host_asks_and_a_failure_says_why_only_after_the_vote(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with arena_app(monkeypatch, beta=Script(tokens=8, status=500), speed=True) as (api, _):
        job = api.submit("Say something.", "speed-room", api_name="/arena_battle")
        job.result(timeout=60)
        frames = json.dumps(job.outputs())
        assert "TTFT" in frames and "tok/s" in frames  # PLAYGROUND_ARENA_SPEED=1
        assert "this answer failed (why is shown after the vote)" in frames
        for secret in ("Sorry about that", "Codename"):  # the server's error could name its model
            assert secret not in frames, secret
        revealed = json.dumps(api.predict(api_name="/arena_vote_tie"))
        assert "Sorry about that" in revealed and "Codename Beta" in revealed


def test_a_deck_is_read_and_a_bad_one_stops_the_app_with_its_step_and_field(tmp_path: Path, monkeypatch) -> None:
    from playground import deck, settings

    good = tmp_path / "deck.yaml"
    good.write_text("- prompt: Hi\n  targets: [smollm2-onnx]\n  temperature: 0\n- prompt: Bye\n  replay: run.json\n")
    (tmp_path / "run.json").write_text(json.dumps({"format": 1, "prompt": "Hi", "parameters": {},
                                                   "results": [{"text": "Hello"}], "timelines": [{"events": []}]}))
    steps = deck.load(good)
    assert [s.prompt for s in steps] == ["Hi", "Bye"] and steps[0].temperature == 0
    assert deck.replay_source(steps[1], good) == ("file", tmp_path / "run.json")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- prompt: Hi\n- prompt: Bye\n  temperature: 9\n")
    monkeypatch.setenv("PLAYGROUND_DECK", str(bad))
    assert any("PLAYGROUND_DECK" in p and "step 2: temperature" in p for p in settings.problems())
    monkeypatch.setenv("PLAYGROUND_DECK", str(tmp_path / "missing.yaml"))
    assert any("cannot be read" in p for p in settings.problems())


def test_a_one_sided_record_converges_and_family_names_are_words() -> None:
    chain = ratings.fit([("a", "b", "a"), ("b", "c", "a"), ("c", "d", "a")])
    again = ratings.fit([("a", "b", "a"), ("b", "c", "a"), ("c", "d", "a")] * 1)
    assert chain == again and chain["a"] > chain["b"] > chain["c"] > chain["d"]
    gaps = [chain["a"] - chain["b"], chain["b"] - chain["c"], chain["c"] - chain["d"]]
    assert gaps[0] == pytest.approx(gaps[2], rel=1e-6)  # symmetric: the fit converged, not cut short
    assert not arena.gives_itself_away("Philosophy began in Philadelphia.", [])
    assert arena.gives_itself_away("I'm Phi3.", [])


def test_a_deck_step_must_name_files_that_exist(tmp_path: Path) -> None:
    from playground import deck

    bad = tmp_path / "deck.yaml"
    bad.write_text("- prompt: Hi\n  replay: missing.json\n")
    with pytest.raises(deck.DeckError, match="step 1: replay: no file 'missing.json'"):
        deck.load(bad)
    bad.write_text("- prompt: Hi\n  images: [nowhere.png]\n")
    with pytest.raises(deck.DeckError, match="step 1: images: no file 'nowhere.png'"):
        deck.load(bad)
    bad.write_text("- prompt: Hi\n  max_tokens: 999999\n")
    with pytest.raises(deck.DeckError, match="step 1: max_tokens"):
        deck.load(bad)
    # files that are there but unusable are found at start-up too, not when the presenter reaches them
    (tmp_path / "broken.json").write_text("{}")
    bad.write_text("- prompt: Hi\n  replay: broken.json\n")
    with pytest.raises(deck.DeckError, match="step 1: replay: broken.json: not a run file"):
        deck.load(bad)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    bad.write_text("- prompt: Hi\n  images: [broken.png]\n")
    with pytest.raises(deck.DeckError, match="step 1: images: broken.png"):
        deck.load(bad)
