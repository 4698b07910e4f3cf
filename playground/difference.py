"""Where two greedy answers first differ, by token: with the model's own tokenizer where the
playground has it (``tokens.py``: the SmolLM2 tokenizer, for SmolLM2 targets), else by words split
at whitespace; each difference says which it used. What a quantisation or a backend changes shows
as the first token that one answer chose and the other did not."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

from playground import stats, tokens

if TYPE_CHECKING:
    from playground.catalog import Target

WORDS = "words split at whitespace"
CONTEXT = 30  # characters of the common part kept before the difference
AFTER = 20  # characters kept after the differing token


@dataclass(frozen=True)
class Difference:
    index: int  # which text leaves the first one
    token: int  # the first differing token (or word), counted from 1
    unit: str  # what a token is here: a tokenizer's name or WORDS
    character: int  # where that token starts, in both texts
    common: str  # the text both share just before it
    theirs: str  # the first text's token there ("" when it had ended)
    ours: str
    theirs_after: str  # a little of what follows each
    ours_after: str

    def as_dict(self) -> dict[str, Any]:
        """Without ``index``: the entry names the run or target instead."""
        return {k: v for k, v in asdict(self).items() if k != "index"}


def spans(text: str, tokenizer: Any | None) -> tuple[list[Any], list[tuple[int, int]]]:
    """The text's units (token ids, or words) and where each starts and ends in it."""
    if tokenizer is not None:
        encoding = tokenizer.encode(text, add_special_tokens=False)
        return list(encoding.ids), [tuple(o) for o in encoding.offsets]
    found = list(re.finditer(r"\s*\S+|\s+$", text))  # each word with the whitespace before it
    return [m.group() for m in found], [m.span() for m in found]


def unit_for(targets: Sequence[Target], wait: bool = True) -> tuple[Any | None, str]:
    """The tokenizer the targets' model uses, when the playground has it; else None and WORDS."""
    if targets and all(tokens.is_smollm2(t) for t in targets):
        tokenizer = tokens.tokenizer(wait=wait)
        if tokenizer is not None:
            return tokenizer, tokens.TOKENIZER_NAME
    return None, WORDS


def first_difference(texts: Sequence[str], targets: Sequence[Target]) -> Difference | None:
    """Where the first text that differs from the first one leaves it; None when all are the same."""
    if len(set(texts)) <= 1:
        return None
    tokenizer, unit = unit_for(targets)
    units = [spans(text, tokenizer) for text in texts]
    found = stats.first_difference([ids for ids, _ in units])
    if found is None:  # the same tokens, different text (a tokenizer that drops something): by word
        tokenizer, unit = None, WORDS
        units = [spans(text, None) for text in texts]
        found = stats.first_difference([ids for ids, _ in units])
        if found is None:
            index = next(i for i, t in enumerate(texts) if t != texts[0])
            found = (index, len(units[0][0]))
    index, token = found
    reference, other = texts[0], texts[index]
    (_, first_offsets), (_, other_offsets) = units[0], units[index]
    at = first_offsets[token][0] if token < len(first_offsets) else len(reference)
    if token >= len(first_offsets) and token < len(other_offsets):
        at = other_offsets[token][0]

    def piece(text: str, offsets: list[tuple[int, int]]) -> tuple[str, str]:
        if token >= len(offsets):
            return "", ""
        start, end = offsets[token]
        return text[start:end], text[end:end + AFTER]

    (theirs, theirs_after), (ours, ours_after) = piece(reference, first_offsets), piece(other, other_offsets)
    return Difference(index, token + 1, unit, at, reference[max(0, at - CONTEXT):at], theirs, ours, theirs_after,
                      ours_after)


def across_targets(targets: list[Target], results: list[list[Any]]) -> list[dict[str, Any]]:
    """Greedy answers of targets of the same model (each target's first measured answer): the same,
    or where one first leaves the first target's: what a quantisation or a backend changes."""
    groups: dict[str, list[tuple[Target, str]]] = {}
    for target, samples in zip(targets, results):
        ok = [s for s in samples if not s.warmup and s.status == "done"]
        if ok:
            groups.setdefault(target.model or target.id, []).append((target, ok[0].text))
    compared = []
    for model, members in groups.items():
        if len({t.id for t, _ in members}) < 2:
            continue
        entry: dict[str, Any] = {"model": model, "targets": [t.id for t, _ in members]}
        (first, reference), differences = members[0], []
        for target, text in members[1:]:  # each against the first: one that differs says nothing of the others
            difference = first_difference([reference, text], [first, target])
            if difference is not None:
                differences.append({"target": target.id, "against": first.id, **difference.as_dict()})
        entry["identical"] = not differences
        if differences:
            entry["differences"] = differences
            entry["first_difference"] = min(differences, key=lambda d: d["character"])  # the earliest
        compared.append(entry)
    return compared


def where(d: dict[str, Any]) -> str:
    """"token 4 (SmolLM2 tokenizer)", "word 3 (words split at whitespace)"."""
    return f"{'word' if d['unit'] == WORDS else 'token'} {d['token']} ({d['unit']})"


def repeats_text(entry: dict[str, Any]) -> str:
    """A target's greedy answers across its repeats: the same, or where one first differs."""
    if entry["identical_across_repeats"]:
        return "identical across repeats"
    d = entry["first_difference"]
    return (f"of run {d['run']} leave run {d['against_run']}'s at {where(d)}: "
            f"{d['ours']!r} where run {d['against_run']} has {d['theirs']!r}")


def across_text(entry: dict[str, Any]) -> str:
    """One line on the greedy answers of one model's targets."""
    if entry["identical"]:
        return f"greedy answers of {entry['model']}: identical on {', '.join(entry['targets'])}"
    return f"greedy answers of {entry['model']}: " + "; ".join(
        f"{d['target']} leaves {d['against']} at {where(d)}, after {d['common'][-20:]!r}: {d['ours']!r} where "
        f"{d['against']} has {d['theirs']!r}" for d in entry.get("differences") or [entry["first_difference"]])


def difference_notes(document: dict[str, Any], column_targets: list[str]) -> dict[int, str]:
    """Per column, under its answer: where its greedy answer first leaves the first target's of the
    same model, and where one of its repeats left its first run's (the differing token marked)."""
    notes: dict[int, list[str]] = {}
    for entry in document.get("across_targets", []):
        first = entry.get("first_difference")
        for d in entry.get("differences") or ([first] if first else []):  # an older file has the first alone
            if d["target"] in column_targets:
                notes.setdefault(column_targets.index(d["target"]), []).append(
                    f"≠ leaves {d['against']}'s greedy answer at {where(d)}: {_marked(d, d['against'])}")
    for column, entry in enumerate(document.get("targets", [])):
        d = entry.get("first_difference")
        if d is not None and column < len(column_targets):
            notes.setdefault(column, []).append(
                f"≠ run {d['run']}'s greedy answer leaves run {d['against_run']}'s at {where(d)}: "
                f"{_marked(d, 'run ' + str(d['against_run']))}")
    return {column: "  \n".join(lines) for column, lines in notes.items()}


def _marked(d: dict[str, Any], other: str) -> str:
    return f"…{_shown(d['common'][-20:])}{_token(d['ours'], d['ours_after'])} where {other} has " \
           f"{_token(d['theirs'], d['theirs_after']).lstrip()}"


def _token(token: str, after: str) -> str:
    """The differing token in bold brackets (its leading space outside them), then what follows."""
    lead = " " if token[:1].isspace() else ""
    return f"{lead}**[{_shown(token.strip()) or '(the end)'}]**{_shown(after)}"


def _shown(text: str) -> str:
    """A piece of an answer inside a Markdown note: one line, its markup shown as written."""
    return re.sub(r"([\\`*_\[\]<>#|~])", r"\\\1", re.sub(r"\s+", " ", text))
