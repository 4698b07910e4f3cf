"""The *Arena* and *Leaderboard* tabs: a blind pairwise vote between two answers, and the room's
Bradley–Terry leaderboard (state and ratings: ``arena``, ``ratings``).

Until the vote the browser receives the two answers' text and anonymous states only: the pair is
drawn and kept on the server (a ``gr.State``), an error is shown as "answer B failed" (its message
may name the model), and the speed figures only where the host allows them
(``PLAYGROUND_ARENA_SPEED=1``; a speed can give a model away).
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any, AsyncIterator, Callable

import gradio as gr

from playground import arena, exports, public, settings
from playground.backends import make_backend
from playground.catalog import Catalog
from playground.request import ChatRequest, InputError, build_messages, make_params
from playground.runner import Column, Job, Run
from playground.ui_errors import Refused
from playground.ui_format import fmt_s, plain

MAX_TOKENS = 256
LIVE_S = 5.0  # the leaderboard's refresh while its tab is open


def pool(catalog: Catalog, policy: public.Policy) -> list[str]:
    """The arena's targets: PLAYGROUND_ARENA_TARGETS (those the catalog has and the mode allows),
    else every target that can run now without a download."""
    chosen = settings.arena_targets()
    targets = [catalog.get(t) for t in chosen if t in catalog.ids] if chosen else list(catalog.targets)
    ready = []
    for target in targets:
        if policy.refusal(target) is not None:
            continue
        if chosen or make_backend(target).availability().state == "ready":
            ready.append(target.id)
    return ready


def _state_line(column: Column, show_speed: bool) -> str:
    if column.status == "error":
        return "✗ this answer failed (why is shown after the vote)"
    words = {"queued": "waiting…", "loading": "loading…", "streaming": "writing…", "done": "✓ done",
             "stopped": "■ stopped"}
    line = words.get(column.status, column.status)
    if show_speed and column.timeline.sent is not None:
        m = column.metrics()
        speed = "–" if m.decode_tokens_per_s is None else f"{m.decode_tokens_per_s:.1f}"
        line += f" · TTFT {fmt_s(m.ttft_s)} · decode {speed} tok/s"
    return line


def _answer(column: Column) -> dict[str, Any]:
    m = column.metrics()
    return {"text": column.text, "status": column.status, "error": column.error, "ttft_s": m.ttft_s,
            "decode_tokens_per_s": m.decode_tokens_per_s, "output_tokens": m.output_tokens}


def build(catalog: Catalog, policy: public.Policy, quota: public.Quota | None,
          session_of: Callable[[gr.Request | None], str], quota_keys: Callable[[gr.Request | None], list[str]],
          ) -> tuple[gr.Textbox, gr.Textbox, gr.Timer]:
    """The two tabs (call inside ``gr.Tabs``); their room boxes, which the page fills from ``?room=``,
    and the leaderboard's timer (ticking only while its tab is open)."""
    show_speed = settings.arena_speed()
    labels = {t.id: t.label for t in catalog.targets}
    with gr.Tab("Arena", elem_id="tab-arena") as arena_tab:
        gr.Markdown("Two anonymous answers to your prompt, from two models of this room's pool. Vote for the "
                    "better one; then their names and figures are shown. Votes feed the room's *Leaderboard*.")
        room = gr.Textbox(arena.DEFAULT_ROOM, label="Room (a workshop's votes stay together: ?room=NAME)",
                          elem_id="arena-room", max_length=40)
        picked = gr.CheckboxGroup([(t.label, t.id) for t in catalog.targets], value=[], elem_id="arena-pool",
                                  label="This room's pool, the host's pick: every battle in the room draws from it, "
                                        "once it has two (else PLAYGROUND_ARENA_TARGETS, else every target that "
                                        "can run now)",
                                  visible=not policy.public)
        prompt = gr.Textbox(label="Prompt", lines=2, max_lines=8, elem_id="arena-prompt", max_length=8000)
        battle_btn = gr.Button("Get two answers", variant="primary", elem_id="arena-battle")
        with gr.Row(equal_height=False):
            with gr.Column(min_width=280):
                answer_a = gr.Textbox(label="Answer A", lines=10, max_lines=10, interactive=False,
                                      elem_id="arena-answer-a", autoscroll=True)
                state_a = gr.Markdown("", elem_id="arena-state-a")
            with gr.Column(min_width=280):
                answer_b = gr.Textbox(label="Answer B", lines=10, max_lines=10, interactive=False,
                                      elem_id="arena-answer-b", autoscroll=True)
                state_b = gr.Markdown("", elem_id="arena-state-b")
        with gr.Row():
            vote_btns = [gr.Button(text, visible=False, elem_id=f"arena-vote-{key}")
                         for key, text in arena.VOTES.items()]
        reveal = gr.Markdown("", elem_id="arena-reveal")
        battle = gr.State(None)  # on the server: the pair's names never reach the page before the vote
    with gr.Tab("Leaderboard", elem_id="tab-leaderboard") as board_tab:
        board_room = gr.Textbox(arena.DEFAULT_ROOM, label="Room", elem_id="board-room", max_length=40)
        with gr.Row():
            refresh = gr.Button("Refresh", size="sm", elem_id="board-refresh")
            csv_btn = gr.DownloadButton("Download the votes (CSV)", visible="hidden", elem_id="board-csv")
        board_line = gr.Markdown("", elem_id="board-summary")
        board = gr.Dataframe(headers=["rank", "target", "rating", "95 % CI", "votes", "median TTFT (ms)",
                                      "median decode (tok/s)"], interactive=False, elem_id="board-ratings", wrap=True)
        matrix = gr.Dataframe(label="Win rate of the row against the column (a tie is half)", interactive=False,
                              elem_id="board-matrix", wrap=True)
        timer = gr.Timer(LIVE_S, active=False)

    hidden_votes = [gr.update(visible=False)] * len(vote_btns)
    vote_labels = list(arena.VOTES.values())  # the buttons' values: nothing changes, nothing is built

    def usable(ids: list[str]) -> list[str]:
        return [t for t in ids if t in catalog.ids and policy.refusal(catalog.get(t)) is None]

    async def run_battle(text: str, room_value: str, request: gr.Request) -> AsyncIterator[list[Any]]:
        try:
            room_id = arena.room_name(room_value)
            messages = build_messages(text or "", "")
        except (arena.ArenaError, InputError) as exc:
            raise Refused(str(exc)) from None
        if quota is not None:
            wait = quota.take(quota_keys(request))
            if wait is not None:
                raise Refused(quota.refusal(wait))
        try:
            # the room's pool as saved, whatever a page still shows; one still being picked (under two) is not one yet
            picked_ids = usable(await asyncio.to_thread(arena.room_pool, room_id)) if not policy.public else []
            names = picked_ids if len(picked_ids) >= 2 else await asyncio.to_thread(pool, catalog, policy)
            pair = await asyncio.to_thread(arena.pick_pair, names, room_id)
        except arena.ArenaError as exc:
            raise Refused(str(exc)) from None
        request_ = ChatRequest(messages, make_params(max_tokens=MAX_TOKENS))
        run = Run([Job(catalog.get(t), request_) for t in pair])
        columns: list[Column] = run.columns
        # the first frame hides the votes and clears the battle; later ones leave them as they are (a
        # State's value rebuilds its config entry, a button's update builds a component, each frame)
        settled = [None, "", *hidden_votes]
        async with aclosing(run.frames()) as frames:
            async for columns in frames:
                yield [columns[0].text, columns[1].text, _state_line(columns[0], show_speed),
                       _state_line(columns[1], show_speed), *settled]
                settled = [gr.skip(), "", *vote_labels]
        answers = [_answer(c) for c in columns]
        try:
            battle_id = await asyncio.to_thread(arena.record_battle, room_id, session_of(request), text, pair, answers,
                                                [labels.get(t, t) for t in pair] + list(pair))
        except arena.ArenaError as exc:
            raise Refused(str(exc)) from None
        yield [columns[0].text, columns[1].text, _state_line(columns[0], show_speed),
               _state_line(columns[1], show_speed), {"id": battle_id, "room": room_id},
               "Which answer is better?", *[gr.update(visible=True)] * len(vote_btns)]

    def voter(choice: str) -> Callable[..., list[Any]]:
        def cast(current: dict[str, Any] | None) -> list[Any]:
            if not current:
                raise Refused("No battle to vote on: get two answers first.")
            try:
                row = arena.vote(current["id"], choice)
            except arena.ArenaError as exc:
                raise Refused(str(exc)) from None
            lines = [f"**You voted: {arena.VOTES[choice]}.**"]
            for side, target, answer in (("A", row["target_a"], row["answers"][0]),
                                         ("B", row["target_b"], row["answers"][1])):
                speed = answer.get("decode_tokens_per_s")
                figures = (f"TTFT {fmt_s(answer.get('ttft_s'))} · decode "
                           f"{'–' if speed is None else f'{speed:.1f}'} tok/s · tokens {answer.get('output_tokens') or '–'}")
                failed = f" · ✗ {plain(str(answer['error']))}" if answer.get("error") else ""
                lines.append(f"- {side} was **{labels.get(target, target)}** (`{target}`): {figures}{failed}")
            if arena.failed(row):
                lines.append("⚠ an answer failed, so this vote is kept but not rated: it would rate which target was up.")
            elif row["flagged"]:
                lines.append("⚠ an answer named a model, so this vote was not blind: it counts, flagged.")
            return [None, "\n".join(lines), *hidden_votes]
        return cast

    def standings(room_value: str) -> list[Any]:
        try:
            board_data = arena.standings(arena.room_name(room_value))
        except arena.ArenaError as exc:
            raise Refused(str(exc)) from None
        rows = [[i + 1, labels.get(r["target"], r["target"]), round(r["rating"]),
                 f"{round(r['ci_low'])} – {round(r['ci_high'])}", r["votes"],
                 None if r["median_ttft_s"] is None else round(r["median_ttft_s"] * 1000),
                 None if r["median_decode_tokens_per_s"] is None else round(r["median_decode_tokens_per_s"], 1)]
                for i, r in enumerate(board_data["ratings"])]
        names = list(board_data["win_rates"])
        grid = [[labels.get(i, i), *[("–" if i == j else ("" if (v := board_data["win_rates"][i][j]) is None
                                                             else f"{v * 100:.0f} %")) for j in names]]
                for i in names]
        header = ["", *[labels.get(j, j) for j in names]]
        count = board_data["votes"]
        summary = (f"Room **{board_data['room']}**: {count} vote{'' if count == 1 else 's'}"
                   + (f", {board_data['flagged']} flagged (an answer named a model)" if board_data["flagged"] else "")
                   + (f", {board_data['failed']} not rated (an answer failed)" if board_data.get("failed") else "")
                   + ". Bradley–Terry ratings (1000 is the average) with 95 % bootstrap intervals.")
        return [summary, {"headers": board.headers, "data": rows} if rows else None,
                {"headers": header, "data": grid} if grid else None]

    def votes_file(room_value: str, request: gr.Request) -> Any:
        try:
            name = arena.room_name(room_value)
            text = arena.votes_csv(name, prompts=not policy.public)  # visitors' prompts stay with the host
        except arena.ArenaError as exc:
            raise Refused(str(exc)) from None
        # a folder set of its own: the session's last run downloads (three kept) stay
        path = exports.new_folder(f"{session_of(request)}:arena-votes") / f"arena-votes-{name}.csv"
        path.write_text(text, encoding="utf-8")
        return gr.update(value=str(path), visible=True)

    def save_pool(room_value: str, chosen: list[str] | None) -> None:
        if policy.public:
            raise Refused("On a public Space the arena's pool is the host's setting: PLAYGROUND_ARENA_TARGETS.")
        try:
            arena.set_pool(arena.room_name(room_value), usable(chosen or []))
        except arena.ArenaError as exc:
            raise Refused(str(exc)) from None

    def show_pool(room_value: str) -> Any:
        try:
            return usable(arena.room_pool(arena.room_name(room_value)))
        except arena.ArenaError:
            return gr.skip()  # a bad room name is said when a battle asks for it

    picked.input(save_pool, [room, picked], None, api_name="arena_pool", show_progress="hidden")
    if not policy.public:  # the box shows the room's pool: when the tab opens, and when a room is entered
        gr.on([arena_tab.select, room.submit, room.blur], show_pool, room, picked, api_name=False,
              show_progress="hidden")
    battle_btn.click(run_battle, [prompt, room], [answer_a, answer_b, state_a, state_b, battle, reveal, *vote_btns],
                     api_name="arena_battle", trigger_mode="once")
    prompt.submit(run_battle, [prompt, room], [answer_a, answer_b, state_a, state_b, battle, reveal, *vote_btns],
                  api_name=False, trigger_mode="once")
    for key, button in zip(arena.VOTES, vote_btns):
        button.click(voter(key), battle, [battle, reveal, *vote_btns], api_name=f"arena_vote_{key}")
    board_out = [board_line, board, matrix]
    refresh.click(standings, board_room, board_out, api_name="leaderboard").success(
        votes_file, board_room, csv_btn, api_name=False, show_progress="hidden")
    timer.tick(standings, board_room, board_out, api_name=False, show_progress="hidden")
    board_tab.select(lambda: gr.Timer(active=True), None, timer, api_name=False, queue=False).then(
        standings, board_room, board_out, api_name=False, show_progress="hidden")
    arena_tab.select(lambda: gr.Timer(active=False), None, timer, api_name=False, queue=False)
    return room, board_room, timer


def room_from_link(request: gr.Request) -> list[Any]:
    """``?room=NAME`` fills both rooms; a name that cannot be a room is left out, and said."""
    wanted = str(dict(request.query_params).get("room") or "").strip() if request else ""
    if not wanted:
        return [gr.skip(), gr.skip()]
    try:
        name = arena.room_name(wanted)
    except arena.ArenaError as exc:
        gr.Warning(f"?room=: {exc}")
        return [gr.skip(), gr.skip()]
    return [name, name]

