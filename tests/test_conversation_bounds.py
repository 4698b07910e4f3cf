"""A long conversation is fitted to the request's limits, oldest turns first, and the column says so."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sse_server import Script, ScriptedServer

from playground.catalog import Target
from playground.request import MAX_CONVERSATION_CHARS, ChatRequest, build_messages, fit_history, make_params
from playground.runner import Job, run_to_end

pytestmark = pytest.mark.usefixtures("close_clients")

HISTORY = [(f"question {i} " + "q" * 3000, f"answer {i} " + "a" * 3000) for i in range(10)]  # 6,000+ chars a turn


def test_short_conversations_are_sent_whole() -> None:
    assert fit_history(HISTORY[:2], "hi", "be brief", 256, None) == (HISTORY[:2], None)


def test_the_target_context_keeps_the_newest_turns_and_says_how_many_left() -> None:
    kept, note = fit_history(HISTORY, "hi", "be brief", 256, 8192)  # (8192 - 256) * 3 = 23,808 characters
    assert kept == HISTORY[-3:]
    assert note == "the 7 earliest turns were left out: the conversation would not fit this target's context of 8,192 tokens"


def test_the_overall_limit_applies_where_the_context_is_unknown() -> None:
    huge = [("u" * 60_000, "a" * 60_000)] * 3
    kept, note = fit_history(huge, "hi", None, 256, None)
    assert kept == huge[-1:] and sum(len(u) + len(a) for u, a in kept) <= MAX_CONVERSATION_CHARS
    assert note == f"the 2 earliest turns were left out: the conversation is over {MAX_CONVERSATION_CHARS:,} characters"


def test_a_prompt_that_fills_the_context_leaves_no_history() -> None:
    kept, note = fit_history(HISTORY[:1], "p" * 30_000, None, 256, 8192)
    assert kept == [] and note is not None and note.startswith("the earliest turn was left out")


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer({"five": Script(tokens=5)}) as srv:
        yield srv


async def test_the_column_shows_the_notice(server: ScriptedServer) -> None:
    target = Target(id="t", label="t", backend="openai", model="five", base_url=server.base_url, context_length=8192)
    kept, note = fit_history(HISTORY, "hi", None, 256, target.context_length)
    request = ChatRequest(build_messages("hi", None, kept), make_params(max_tokens=256))
    [column] = await run_to_end([Job(target, request, notices=(note,) if note else ())])
    assert column.status == "done" and column.notices == [note]
    sent = server.chat_requests("five")[-1].body["messages"]
    assert len(sent) == 2 * len(kept) + 1 and sent[0]["content"].startswith("question 7 ")
