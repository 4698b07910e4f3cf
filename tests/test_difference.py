"""Where greedy answers first differ: by the model's tokens where the playground has its tokenizer,
else by words, saying which; across targets of one model and across one target's repeats."""

from __future__ import annotations

from typing import Any

import pytest

from playground import difference, models, repeats, tokens
from playground.catalog import Target
from playground.repeats import Sample
from playground.request import ChatRequest, build_messages, make_params

REMOTE = Target(id="r", label="r", backend="openai", model="m", base_url="http://127.0.0.1:9/v1")


@pytest.fixture
def smollm2(builtin_catalog: Any) -> Any:
    if not models.is_complete(models.bundled_onnx_dir()) or tokens.tokenizer(wait=True) is None:
        pytest.skip("the SmolLM2 tokenizer comes with the built ONNX model (python -m playground prepare)")
    return builtin_catalog.get("smollm2-llamacpp")


def test_smollm2_answers_are_compared_by_its_own_tokens(smollm2: Any) -> None:
    first, second = "The sky is blue today.", "The sky is bluish today."
    d = difference.first_difference([first, second], [smollm2, smollm2])
    assert d is not None and d.unit == tokens.TOKENIZER_NAME
    encode = tokens.tokenizer().encode
    a, b = encode(first, add_special_tokens=False), encode(second, add_special_tokens=False)
    position = next(i for i, (x, y) in enumerate(zip(a.ids, b.ids)) if x != y)
    assert d.token == position + 1 and d.character == a.offsets[position][0]
    assert (d.theirs, d.ours) == (first[slice(*a.offsets[position])], second[slice(*b.offsets[position])])
    assert d.character < first.index("blue") + 4  # a whole token, not the first differing character ("e"/"i")
    assert difference.first_difference([first, first], [smollm2, smollm2]) is None


def test_other_models_are_compared_by_words_and_say_so() -> None:
    d = difference.first_difference(["The sky is blue.", "The sky is bluish."], [REMOTE, REMOTE])
    assert d is not None and d.unit == difference.WORDS
    assert (d.token, d.character, d.common, d.theirs, d.ours) == (4, 10, "The sky is", " blue.", " bluish.")
    ended = difference.first_difference(["one two", "one two three"], [REMOTE, REMOTE])
    assert ended is not None and (ended.token, ended.theirs, ended.ours) == (3, "", " three")


def test_a_repeat_that_differs_is_marked_in_its_column() -> None:
    texts = ["Blue, mostly.", "Blue, mostly.", "Blue, often."]
    runs = [Sample("r", i, False, False, "done", None, text, 0.1, 10, None, None, 1.0, 3, "server")
            for i, text in enumerate(texts, start=1)]
    document = repeats.document([REMOTE], [runs], ChatRequest(build_messages("hi"), make_params(temperature=0.0)),
                                "hi", 3, 0, None)
    [entry] = document["targets"]
    assert entry["identical_across_repeats"] is False
    d = entry["first_difference"]
    assert (d["run"], d["against_run"], d["token"], d["unit"]) == (3, 1, 2, difference.WORDS)
    notes = difference.difference_notes(document, ["r"])
    assert notes == {0: "≠ run 3's greedy answer leaves run 1's at word 2 (words split at whitespace): "
                        "…Blue, **[often.]** where run 1 has **[mostly.]**"}
    assert "run 3 leave run 1's at word 2" in repeats.summary_markdown(document)
