"""How unevenly a figure falls across tasks: the one home of "unfairness".

Tasks are weighted uniformly.  A task with no data (None or NaN) is left out of every
figure; an infinite value is kept, so it shows instead of vanishing.

* `variance` (population variance across tasks: 𝒰 is the variance of per-task CE) and
  `max_min_ratio`;
* `summarize`: the spread figures of per-task alpha/CE/KL and of the model-based speed-up
  S(alpha; K, c) that the audit, s-CDF and its comparison report;
* `resample_within_tasks` / `paired_bootstrap`: percentile bootstraps that resample
  held-out windows within each task (the tasks are fixed, the noise is in their
  estimates), paired across results computed on the same windows;
* `before_after`: what fine-tuning changed, from two teacher-forced results;
* `spearman` and `percentile_interval` for correlations across tasks;
* `speedup_array` and PAPER.md's `speedup_lower_bound`.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.stats import spearmanr

from specfair_kernels.stats import speedup

FIGURES = ("alpha", "kl", "ce")
"""The per-task means that window resampling produces."""


def _present(values) -> np.ndarray:
    v = np.asarray([math.nan if x is None else x for x in values], dtype=np.float64).ravel()
    return v[~np.isnan(v)]


def variance(values) -> float:
    """Population variance across tasks (NaN if no task has data)."""
    v = _present(values)
    return float(np.mean((v - v.mean()) ** 2)) if v.size else math.nan


def max_min_ratio(values) -> float:
    """Largest over smallest per-task value (NaN unless every present value is > 0)."""
    v = _present(values)
    return float(v.max() / v.min()) if v.size and v.min() > 0 else math.nan


def relative_change(before: float, after: float) -> float:
    """(after - before) / before, NaN when before is 0."""
    return (after - before) / before if before else math.nan


def speedup_array(alpha, num_draft: int, cost_ratio: float) -> np.ndarray:
    """S(alpha; K, c) elementwise on an array (NaN stays NaN)."""
    a = torch.from_numpy(np.asarray(alpha, dtype=np.float64))
    return speedup(a, num_draft, cost_ratio).numpy()


def speedup_lower_bound(kl, num_draft: int, cost_ratio: float) -> np.ndarray:
    """PAPER.md's bound: Pinsker and Jensen give alpha_T >= 1 - sqrt(KL_T / 2), and S is
    increasing in alpha, so S_T >= S(max(0, 1 - sqrt(KL_T / 2)); K, c)."""
    a = np.clip(1.0 - np.sqrt(np.asarray(kl, dtype=np.float64) / 2.0), 0.0, 1.0)
    return speedup_array(a, num_draft, cost_ratio)


def summarize(per_task: dict[str, Sequence], num_draft: int = 4, cost_ratio: float = 0.0) -> dict[str, float]:
    """Spread figures from per-task lists ``{"alpha": [...], "ce": [...], "kl": [...]}``.

    ``mean_alpha``, ``min_alpha``; ``alpha_variance`` and ``alpha_max_min_ratio``; ``U_ce``
    (the paper's unfairness: variance of per-task CE) and ``U_kl``; and of the model-based
    speed-up S(alpha_t; num_draft, cost_ratio) ``mean_speedup``, ``speedup_variance``,
    ``speedup_max_min_ratio``."""
    alpha = _present(per_task["alpha"])
    s = speedup_array(alpha, num_draft, cost_ratio)
    return {
        "mean_alpha": float(alpha.mean()) if alpha.size else math.nan,
        "alpha_variance": variance(alpha), "alpha_max_min_ratio": max_min_ratio(alpha),
        "min_alpha": float(alpha.min()) if alpha.size else math.nan,
        "U_ce": variance(per_task.get("ce", [])), "U_kl": variance(per_task.get("kl", [])),
        "mean_speedup": float(s.mean()) if s.size else math.nan,
        "speedup_variance": variance(s), "speedup_max_min_ratio": max_min_ratio(s),
    }


def spearman(x, y) -> float:
    """Spearman's rho over the tasks where both are finite (NaN with fewer than 3, or a constant)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return math.nan
    return float(spearmanr(x[ok], y[ok]).statistic)


def percentile_interval(samples, level: float = 0.95) -> list[float]:
    """[low, high] percentile interval of the finite samples ([NaN, NaN] if none)."""
    s = np.asarray(samples, float)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return [math.nan, math.nan]
    tail = round(50 * (1 - level), 12)  # 2.5 exactly for level 0.95
    return [float(np.percentile(s, tail)), float(np.percentile(s, 100 - tail))]


def resample_within_tasks(window_task, window_tokens, sums: Sequence[dict[str, np.ndarray]], num_tasks: int,
                          n_boot: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """Per-task means over ``n_boot`` resamples of the windows within each task.

    ``window_task`` [N] and ``window_tokens`` [N] describe the windows; each element of
    ``sums`` is one result's per-window sums ``{figure: [N]}`` on those windows.  One set of
    window draws (per task, in task order) is applied to every result, so results computed
    on the same windows are resampled in pairs.  Returns, per result, ``{figure: [n_boot,
    num_tasks]}`` (NaN for a task without windows)."""
    task = np.asarray(window_task)
    tokens = np.asarray(window_tokens, float)
    out = [{k: np.full((n_boot, num_tasks), np.nan) for k in s} for s in sums]
    for ti in range(num_tasks):
        idx = np.flatnonzero(task == ti)
        if idx.size == 0:
            continue
        draw = idx[rng.integers(0, idx.size, size=(n_boot, idx.size))]
        n = tokens[draw].sum(1)
        for res, s in zip(out, sums):
            for k, v in s.items():
                res[k][:, ti] = np.asarray(v, float)[draw].sum(1) / np.where(n > 0, n, np.nan)
    return out


def task_means(window_task, window_tokens, sums: dict[str, np.ndarray], num_tasks: int) -> dict[str, np.ndarray]:
    """Token-weighted per-task means ``{figure: [num_tasks]}`` of per-window sums (NaN for a
    task without tokens)."""
    task = np.asarray(window_task)
    n = np.bincount(task, weights=np.asarray(window_tokens, float), minlength=num_tasks)
    return {k: np.bincount(task, weights=np.asarray(v, float), minlength=num_tasks) / np.where(n > 0, n, np.nan)
            for k, v in sums.items()}


def _window_sums(result) -> dict[str, np.ndarray]:
    return {k: np.asarray(getattr(result, f"{k}_sum"), float) for k in FIGURES}


def _task_lists(means: dict[str, np.ndarray]) -> dict[str, list]:
    return {k: [None if math.isnan(x) else float(x) for x in v] for k, v in means.items()}


def paired_bootstrap(results: Sequence, statistic: Callable[..., float], n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Percentile bootstrap of ``statistic`` over windows resampled within each task.

    ``results`` are teacher-forced results on the same windows (``window_task``,
    ``window_tokens``, ``alpha_sum``, ``kl_sum``, ``ce_sum``; e.g. before and after
    fine-tuning); every replicate applies one draw of windows to all of them.
    ``statistic(*per_task)`` gets, per result, ``{"alpha": [...], "kl": [...], "ce": [...]}``
    (per-task means, None for a task without tokens) and returns a float.
    Returns ``{"estimate", "low", "high", "level", "n_boot"}``."""
    base = results[0]
    wt, wn = np.asarray(base.window_task), np.asarray(base.window_tokens)
    for r in results[1:]:
        if not (np.array_equal(np.asarray(r.window_task), wt) and np.array_equal(np.asarray(r.window_tokens), wn)):
            raise ValueError("paired_bootstrap needs results computed on the same windows")
    T = len(base.task_names)
    sums = [_window_sums(r) for r in results]
    est = statistic(*[_task_lists(task_means(wt, wn, s, T)) for s in sums])
    reps = resample_within_tasks(wt, wn, sums, T, n_boot, np.random.default_rng(seed))
    values = [statistic(*[_task_lists({k: v[b] for k, v in rep.items()}) for rep in reps]) for b in range(n_boot)]
    lo, hi = percentile_interval(values, level)
    return {"estimate": float(est), "low": lo, "high": hi, "level": level, "n_boot": n_boot}


def before_after(before, after, num_draft: int, cost_ratio: float) -> dict:
    """Before/after figures of one fine-tuning run: two teacher-forced results
    (`specfair.teacher_forced.TeacherForcedResult`) on the same held-out windows."""
    names = before.task_names
    sb, sa = before.summary(num_draft, cost_ratio), after.summary(num_draft, cost_ratio)
    deltas = {t: after.alpha[t] - before.alpha[t] for t in names if after.alpha[t] is not None}
    worst = min(deltas, key=deltas.get)
    per_task = {t: {"alpha_before": before.alpha[t], "alpha_after": after.alpha[t],
                    "ce_before": before.ce[t], "ce_after": after.ce[t],
                    "kl_before": before.kl[t], "kl_after": after.kl[t],
                    "speedup_before": float(speedup(before.alpha[t], num_draft, cost_ratio)),
                    "speedup_after": float(speedup(after.alpha[t], num_draft, cost_ratio)),
                    "tokens": before.tokens[t]}
                for t in names if before.alpha[t] is not None}
    return {"before": sb, "after": sa,
            "alpha_variance_change": relative_change(sb["alpha_variance"], sa["alpha_variance"]),
            "U_ce_change": relative_change(sb["U_ce"], sa["U_ce"]),
            "U_kl_change": relative_change(sb["U_kl"], sa["U_kl"]),
            "mean_alpha_change": sa["mean_alpha"] - sb["mean_alpha"],
            "speedup_variance_change": relative_change(sb["speedup_variance"], sa["speedup_variance"]),
            "worst_task": worst, "worst_alpha_change": deltas[worst], "per_task": per_task}
