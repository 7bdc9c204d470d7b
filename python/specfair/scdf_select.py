"""Choosing each method's knobs on the validation split, with the same budget per method.

`specfair.scdf_compare` fine-tunes every candidate of a method (every seed), measures it on
the **validation** split only, and keeps the candidate that `selection_score` ranks first;
only that candidate is ever measured on the held-out split.  This module holds the search
spaces, the candidates a budget buys, and the ranking.

Search spaces (`SEARCH_SPACE`): the learning rate for every method that trains weights,
plus the method's own knob: ``uniform_mix`` (epsilon) for ``scdf``, ``balance_mix`` for
``balanced`` (how far sampling moves from token-proportional towards 1/m), and the
log-temperature's learning rate ``temperature_lr`` for ``temperature`` (tau itself is
fitted, the lr is what a user would tune).  ``uniform`` has only the learning rate.

Budget: every method gets the same number of candidates, ``budget`` (each trained with
every seed, so the same training tokens per method).  A space larger than the budget is
subsampled deterministically, coverage first: points are taken in the order of a stable
hash of (method, point), each time the one that adds the most knob values not yet tried,
so with a budget of 2 every knob with 2 values gets both (the learning rate of s-CDF is
searched as widely as that of a one-knob method); a smaller space is used whole (and the
record says how many candidates ran).

Ranking (`selection_score`, higher is better): a candidate that keeps the guard
constraints on validation (mean alpha not lower than the original drafter's, no task losing
more than 1 point of alpha: the issue's no-harm targets) beats one that does not; among the
guarded ones the lowest variance of per-task alpha wins; among the others the least harm
(highest worst-task change, then highest mean change).  Figures of a candidate are
averaged over its seeds (the worst-task change is the worst over seeds).
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

from .corpus import stable_unit

__all__ = ["SEARCH_SPACE", "GUARD", "candidates", "merge_space", "selection_score", "seed_average"]

LRS = (2.5e-4, 5e-4, 1e-3, 2e-3)
SEARCH_SPACE: dict[str, dict[str, tuple]] = {
    "uniform": {"lr": LRS},
    "balanced": {"lr": LRS, "balance_mix": (0.5, 1.0)},
    "temperature": {"temperature_lr": (0.005, 0.01, 0.02, 0.05)},
    "scdf": {"lr": LRS, "uniform_mix": (0.3, 0.5, 0.7)},
}
GUARD = {"mean_alpha_change": 0.0, "worst_alpha_change": -0.01}
"""No-harm constraints a candidate must keep on validation to be ranked by its variance."""


def merge_space(method: str, overrides: Mapping[str, Sequence] | None, error: type[Exception] = ValueError
                ) -> dict[str, tuple]:
    """``method``'s search space with ``overrides`` (knob -> values) replacing the values of
    knobs it has; an override of a knob no method searches is an error."""
    if method not in SEARCH_SPACE:
        raise error(f"method must be one of {tuple(SEARCH_SPACE)}, got {method!r}")
    overrides = dict(overrides or {})
    known = {k for space in SEARCH_SPACE.values() for k in space}
    bad = sorted(set(overrides) - known)
    if bad:
        raise error(f"search: unknown knob(s) {bad}; the searched knobs are {sorted(known)}")
    space = dict(SEARCH_SPACE[method])
    for k, v in overrides.items():
        if k in space:
            if not v:
                raise error(f"search: knob {k!r} needs at least one value")
            space[k] = tuple(v)
    return space


def candidates(method: str, budget: int, space: Mapping[str, Sequence]) -> list[dict[str, Any]]:
    """Up to ``budget`` knob settings (dicts) from the product of ``space``, in product order;
    a larger product is subsampled by a stable hash of (method, point)."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    keys = list(space)
    points = [dict(zip(keys, vals)) for vals in itertools.product(*(space[k] for k in keys))]
    if len(points) <= budget:
        return points
    ranked = sorted(range(len(points)), key=lambda i: stable_unit("candidate", method, repr(sorted(points[i].items()))))
    keep: list[int] = []
    seen: dict[str, set] = {k: set() for k in keys}
    while len(keep) < budget:       # coverage first: the point (in hash order) adding the most unseen values
        i = max((j for j in ranked if j not in keep),
                key=lambda j: (sum(points[j][k] not in seen[k] for k in keys), -ranked.index(j)))
        keep.append(i)
        for k in keys:
            seen[k].add(points[i][k])
    return [p for i, p in enumerate(points) if i in set(keep)]


def seed_average(figures: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """One candidate's validation figures over its seeds (``spread.before_after`` dicts):
    mean variance after, mean variance change, mean change of mean alpha, worst task change
    (the worst seed)."""
    n = len(figures)
    return {"alpha_variance_after": sum(f["after"]["alpha_variance"] for f in figures) / n,
            "alpha_variance_change": sum(f["alpha_variance_change"] for f in figures) / n,
            "U_ce_change": sum(f["U_ce_change"] for f in figures) / n,
            "mean_alpha_change": sum(f["mean_alpha_change"] for f in figures) / n,
            "worst_alpha_change": min(f["worst_alpha_change"] for f in figures)}


def selection_score(avg: Mapping[str, float]) -> tuple:
    """Sort key of a candidate's seed-averaged validation figures (higher is better)."""
    def num(x, missing=-math.inf):
        return missing if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

    guarded = (num(avg["mean_alpha_change"]) >= GUARD["mean_alpha_change"]
               and num(avg["worst_alpha_change"]) >= GUARD["worst_alpha_change"])
    if guarded:
        return (1, -num(avg["alpha_variance_after"], math.inf), 0.0)
    return (0, num(avg["worst_alpha_change"]), num(avg["mean_alpha_change"]))
