"""Bradley–Terry ratings from pairwise votes, as LMArena computes its leaderboard: a maximum-likelihood
fit of P(i beats j) = 1 / (1 + 10^((R_j - R_i) / 400)), a tie counted as half a win for each side
("both bad" is a tie), ratings centred on 1000; and 95 % intervals from a bootstrap over the votes
(resampled with replacement, each resample refitted; seeded, so the same votes give the same
intervals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

SCALE = 400 / math.log(10)  # a logit of 1 in rating points
CENTRE = 1000.0
RESAMPLES = 200
SEED = 0
OUTCOMES = {"a": 1.0, "b": 0.0, "tie": 0.5, "bad": 0.5}  # the share of the win that goes to A


@dataclass(frozen=True)
class Rating:
    target: str
    rating: float
    ci_low: float
    ci_high: float
    votes: int


def fit(battles: Sequence[tuple[str, str, str]], targets: Sequence[str] | None = None,
        iterations: int = 200) -> dict[str, float]:
    """Ratings from (target A, target B, outcome) votes. A target's rating is only as defined as its
    votes make it: one that only ever won (or lost) would go to infinity, so a tiny prior (one
    tie against the centre's average, in weight 1e-3 of a vote) keeps every rating finite."""
    names = sorted(set(targets or []) | {t for a, b, _ in battles for t in (a, b)})
    index = {name: i for i, name in enumerate(names)}
    k = len(names)
    if k == 0:
        return {}
    wins = np.zeros((k, k))  # wins[i, j]: i's share of the wins in i-j battles
    for a, b, outcome in battles:
        share = OUTCOMES[outcome]
        wins[index[a], index[b]] += share
        wins[index[b], index[a]] += 1.0 - share
    games = wins + wins.T
    prior = 1e-3
    strength = np.ones(k)
    for _ in range(iterations):  # Hunter's MM algorithm for Bradley–Terry
        total = wins.sum(axis=1) + prior
        pair = (games + prior) / (strength[:, None] + strength[None, :])
        np.fill_diagonal(pair, 0.0)
        updated = total / pair.sum(axis=1)
        updated /= math.exp(np.log(updated).mean())
        if np.allclose(updated, strength, rtol=1e-10, atol=1e-12):
            strength = updated
            break
        strength = updated
    logits = np.log(strength)
    logits -= logits.mean()
    return {name: CENTRE + SCALE * float(logits[index[name]]) for name in names}


def leaderboard(battles: Sequence[tuple[str, str, str]], resamples: int = RESAMPLES, seed: int = SEED
                ) -> list[Rating]:
    """Every voted target, best first: its rating and the 95 % bootstrap interval."""
    if not battles:
        return []
    point = fit(battles)
    names = list(point)
    rng = np.random.default_rng(seed)
    samples = {name: [] for name in names}
    for _ in range(resamples):
        drawn = [battles[i] for i in rng.integers(0, len(battles), len(battles))]
        ratings = fit(drawn, names)
        for name in names:
            samples[name].append(ratings[name])
    votes = {name: sum(name in (a, b) for a, b, _ in battles) for name in names}
    board = [Rating(name, point[name], float(np.percentile(samples[name], 2.5)),
                    float(np.percentile(samples[name], 97.5)), votes[name]) for name in names]
    return sorted(board, key=lambda r: -r.rating)


def win_rates(battles: Sequence[tuple[str, str, str]]) -> dict[str, dict[str, float | None]]:
    """rates[i][j]: the share of i's battles against j that i won (a tie is half), None where none."""
    names = sorted({t for a, b, _ in battles for t in (a, b)})
    won = {i: {j: 0.0 for j in names} for i in names}
    played = {i: {j: 0 for j in names} for i in names}
    for a, b, outcome in battles:
        share = OUTCOMES[outcome]
        won[a][b] += share
        won[b][a] += 1.0 - share
        played[a][b] += 1
        played[b][a] += 1
    return {i: {j: (won[i][j] / played[i][j] if played[i][j] else None) for j in names} for i in names}
