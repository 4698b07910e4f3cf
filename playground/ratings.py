"""Bradley–Terry ratings from pairwise votes, as LMArena computes its leaderboard: a maximum-likelihood
fit of P(i beats j) = 1 / (1 + 10^((R_j - R_i) / 400)) (a logistic regression on the votes, here
solved by Newton's method), a tie counted as half a win for each side ("both bad" is a tie),
ratings centred on 1000; and 95 % intervals from a bootstrap over the votes
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


PRIOR = 1e-3  # an L2 pull towards the average, in logits: keeps an all-wins record finite


def fit(battles: Sequence[tuple[str, str, str]], targets: Sequence[str] | None = None) -> dict[str, float]:
    """Ratings from (target A, target B, outcome) votes: the maximum of the Bradley–Terry likelihood
    (with a tiny L2 prior, ``PRIOR``: a target that only ever won would otherwise go to infinity),
    found by Newton's method, which converges in a few steps even where one side won every vote."""
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
    theta = np.zeros(k)

    def objective(t: np.ndarray) -> float:
        diff = t[:, None] - t[None, :]
        return float((wins * -np.logaddexp(0.0, -diff)).sum() - PRIOR / 2 * (t @ t))

    current = objective(theta)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))
        gradient = (wins - games * p).sum(axis=1) - PRIOR * theta
        weight = games * p * (1.0 - p)
        hessian = weight - np.diag(weight.sum(axis=1)) - PRIOR * np.eye(k)
        step = np.linalg.solve(hessian, gradient)
        size = 1.0
        while size > 1e-6:  # a damped step: the likelihood never goes down
            trial = theta - size * step
            value = objective(trial)
            if value >= current - 1e-12:
                break
            size /= 2
        theta, previous, current = trial, current, value
        if np.abs(size * step).max() < 1e-9 or abs(current - previous) < 1e-13:
            break
    theta -= theta.mean()
    return {name: CENTRE + SCALE * float(theta[index[name]]) for name in names}


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
