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
* `seed_interval`: mean and Student-t interval of a figure over independent seeds;
* `speedup_array` and PAPER.md's `speedup_lower_bound`;
* `task_moments`, `resample_task_moments`, `corrected_spread` and `ratio_spread`: the
  audit's spread figures, with the between-task variance corrected for within-task
  sampling noise and basic (pivotal) bootstrap intervals that contain their estimates
  (see `corrected_spread`).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from scipy.stats import spearmanr
from scipy.stats import t as student_t

from specfair_kernels.stats import speedup

from .costs import speedup_with_verify_cost

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


def speedup_array(alpha, num_draft: int, cost_ratio: float, verify_cost: float = 1.0) -> np.ndarray:
    """S(alpha; K, c, r_K) elementwise on an array (NaN stays NaN): PAPER.md's S(alpha; K, c)
    with the verifier's measured cost r_K of scoring K+1 tokens (relative to one) in place of
    the 1 it assumes (`specfair.costs.speedup_with_verify_cost`; r_K = 1 is PAPER.md's)."""
    return np.asarray(speedup_with_verify_cost(np.asarray(alpha, dtype=np.float64), num_draft, cost_ratio,
                                               verify_cost), dtype=np.float64)


def speedup_lower_bound(kl, num_draft: int, cost_ratio: float, verify_cost: float = 1.0) -> np.ndarray:
    """PAPER.md's bound: Pinsker and Jensen give alpha_T >= 1 - sqrt(KL_T / 2), and S is
    increasing in alpha, so S_T >= S(max(0, 1 - sqrt(KL_T / 2)); K, c, r_K) (r_K = 1: PAPER.md's S)."""
    a = np.clip(1.0 - np.sqrt(np.asarray(kl, dtype=np.float64) / 2.0), 0.0, 1.0)
    return speedup_array(a, num_draft, cost_ratio, verify_cost)


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


def seed_interval(values, level: float = 0.95) -> dict:
    """``{"mean", "low", "high", "n"}`` of a figure over independent runs (seeds): the mean and
    the two-sided Student-t interval mean ± t_{n-1} · sd / sqrt(n) (sd with n - 1).  Finite
    values only; with fewer than 2 the interval is [NaN, NaN]."""
    v = np.asarray([x for x in values if x is not None], float)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    mean = float(v.mean())
    if n < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": n}
    half = float(student_t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


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


# ------------------------------------------------------------------ noise-corrected spread
SPREAD_ESTIMATOR = (
    "between-task variance corrected for within-task noise: the population variance of the per-task means "
    "minus (T-1)/T times the mean squared standard error of a task mean (each from the spread of that task's "
    "held-out windows, ratio-estimator form), clipped at 0; 95% basic (pivotal) bootstrap interval, windows "
    "resampled within tasks (their deviations from the task mean scaled by sqrt(n/(n-1))) and the corrected "
    "figure recomputed on every resample, whose truth in the "
    "bootstrap world is the uncorrected variance, pivoted on the clipped estimate; lower end clipped at 0")
RATIO_ESTIMATOR = ("max/min of the per-task means; 95% basic (pivotal) bootstrap interval, windows resampled "
                   "within tasks, lower end clipped at 1")
MIN_WINDOWS = 2
"""Windows a task needs for a standard error, and so for any interval."""


def _moments(sums: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ratio-estimator mean and squared standard error over the last axis (windows)."""
    n = sums.shape[-1]
    total = tokens.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = sums.sum(-1) / np.where(total > 0, total, np.nan)
        resid = sums - mean[..., None] * tokens
        se2 = (n / (n - 1) * (resid ** 2).sum(-1) / total ** 2) if n >= MIN_WINDOWS else np.full_like(mean, np.nan)
    return mean, se2


def task_moments(window_task, window_tokens, sums: dict[str, np.ndarray], num_tasks: int) -> dict:
    """Per task, the token-weighted mean of each figure and its squared standard error.

    ``{"windows": [T] window counts, figure: (mean [T], se2 [T])}``.  The standard error is
    the ratio estimator's (n/(n-1)) sum_w (s_w - mean m_w)^2 / (sum_w m_w)^2 over the task's n
    windows (s_w the window's sum, m_w its tokens); with windows of equal size it is the usual
    unbiased variance of a mean.  NaN for a task with fewer than `MIN_WINDOWS` windows."""
    task, tok = np.asarray(window_task), np.asarray(window_tokens, float)
    out: dict = {"windows": np.bincount(task, minlength=num_tasks)}
    for k, v in sums.items():
        v = np.asarray(v, float)
        mean, se2 = np.full(num_tasks, np.nan), np.full(num_tasks, np.nan)
        for ti in range(num_tasks):
            idx = np.flatnonzero(task == ti)
            if idx.size:
                mean[ti], se2[ti] = _moments(v[idx], tok[idx])
        out[k] = (mean, se2)
    return out


def resample_task_moments(window_task, window_tokens, sums: dict[str, np.ndarray], num_tasks: int, n_boot: int,
                          rng: np.random.Generator) -> dict:
    """`task_moments` on ``n_boot`` resamples of the windows within each task (one set of
    draws for every figure): ``{figure: (mean [n_boot, T], se2 [n_boot, T])}``.

    Each window's deviation from its task's mean, s_w - mean m_w, is first scaled by
    sqrt(n/(n-1)) (the task's mean unchanged): a plain bootstrap of n windows has variance
    (n-1)/n of the standard error's square, too narrow with few windows; rescaled, the
    resampled task mean's variance equals the squared standard error (equal windows)."""
    task, tok = np.asarray(window_task), np.asarray(window_tokens, float)
    out = {k: (np.full((n_boot, num_tasks), np.nan), np.full((n_boot, num_tasks), np.nan)) for k in sums}
    for ti in range(num_tasks):
        idx = np.flatnonzero(task == ti)
        if idx.size == 0:
            continue
        pick = rng.integers(0, idx.size, size=(n_boot, idx.size))
        inflate = math.sqrt(idx.size / (idx.size - 1)) if idx.size >= MIN_WINDOWS else 1.0
        for k, v in sums.items():
            v, m = np.asarray(v, float)[idx], tok[idx]
            mean = v.sum() / m.sum() if m.sum() > 0 else math.nan
            v = mean * m + inflate * (v - mean * m)   # same task mean, residuals rescaled
            out[k][0][:, ti], out[k][1][:, ti] = _moments(v[pick], m[pick])
    return out


def _derivative(fn: Callable, x: np.ndarray) -> np.ndarray:
    h = 1e-6 * np.maximum(1.0, np.abs(x))
    return (fn(x + h) - fn(x - h)) / (2 * h)


def corrected_variance(mean: np.ndarray, se2: np.ndarray, transform: Callable | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(noise-corrected, uncorrected) population variance across tasks (last axis) of the
    per-task means, or of ``transform(mean)`` (its standard error by the delta method).

    If task t's mean is m_t + e_t with noise of variance s_t^2, the variance of the means has
    expectation V + (T-1)/T mean_t(s_t^2), V the variance of the true m_t; so V is estimated
    without bias by the variance minus (T-1)/T times the mean of the squared standard
    errors.  Tasks without data (NaN mean) are left out; NaN where a present task has no
    standard error (too few windows).  Not clipped."""
    mean, se2 = np.asarray(mean, float), np.asarray(se2, float)
    if transform is not None:
        se2 = se2 * _derivative(transform, mean) ** 2
        mean = transform(mean)
    ok = ~np.isnan(mean)
    T = ok.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = np.where(ok, mean, 0).sum(-1) / T
        raw = np.where(ok, (mean - mu[..., None]) ** 2, 0).sum(-1) / T
        noise = np.where(ok, se2, 0).sum(-1) / T
        noise = np.where((ok & np.isnan(se2)).any(-1), np.nan, noise)
        return raw - (T - 1) / T * noise, raw


def pivot_interval(estimate: float, samples, truth: float, level: float = 0.95) -> tuple[list[float], bool]:
    """Basic (pivotal) bootstrap interval: the law of (estimate - true value) is taken to be
    that of (bootstrap estimate - ``truth``), ``truth`` being the figure's value in the
    bootstrap world (the plug-in value of the resampled population); so
    [estimate - (q_hi - truth), estimate - (q_lo - truth)].  When the bootstrap quantiles do
    not straddle ``truth`` (very skewed samples) the interval is widened to reach the
    estimate, and the flag is True.  ([NaN, NaN], False) without finite samples."""
    lo_q, hi_q = percentile_interval(samples, level)
    if not (math.isfinite(lo_q) and math.isfinite(estimate) and math.isfinite(truth)):
        return [math.nan, math.nan], False
    lo, hi = estimate - (hi_q - truth), estimate - (lo_q - truth)
    widened = not lo <= estimate <= hi
    return [min(lo, estimate), max(hi, estimate)], widened


def few_window_tasks(windows, names: Sequence[str]) -> list[str]:
    """The tasks (by name) with some but fewer than `MIN_WINDOWS` windows: no interval for them."""
    return [n for n, w in zip(names, np.asarray(windows)) if 0 < w < MIN_WINDOWS]


def corrected_spread(est: tuple, boot: tuple, transform: Callable | None = None, level: float = 0.95) -> dict:
    """The noise-corrected between-task variance (`corrected_variance`) with its interval.

    ``est`` = (mean [T], se2 [T]) from `task_moments`, ``boot`` = (mean [B, T], se2 [B, T])
    from `resample_task_moments`.  The interval is `pivot_interval` of the corrected figure
    over the resamples, with the uncorrected variance as the bootstrap world's truth (the
    resampled tasks' true means are the observed ones), pivoted on the estimate clipped at
    0 (a variance); its lower end is clipped at 0 too, so it contains the clipped estimate
    and is never [0, 0] unless the resamples do not vary.  Returns
    ``{"value", "value_unclipped", "uncorrected", "ci95", "widened", "estimator"}``; value and
    interval are None (n/a) when a task has fewer than `MIN_WINDOWS` windows."""
    value, raw = (float(x) for x in corrected_variance(*est, transform))
    samples = corrected_variance(*boot, transform)[0]
    ok = math.isfinite(value)
    # pivot on the clipped estimate: a negative estimate (less spread than the noise alone
    # gives) still gets the upper end its 0 would, not an interval squeezed to [0, 0]
    ci, widened = pivot_interval(max(value, 0.0), samples, raw, level) if ok else ([math.nan] * 2, False)
    return {"value": max(value, 0.0) if ok else None, "value_unclipped": value if ok else None,
            "uncorrected": raw, "ci95": [max(c, 0.0) for c in ci] if ok and math.isfinite(ci[0]) else [None, None],
            "widened": widened, "estimator": "noise-corrected variance"}


def ratio_spread(est_mean, boot_mean, level: float = 0.95, windows=None) -> dict:
    """max/min of the per-task means (`max_min_ratio`) with its `pivot_interval` (the
    observed ratio is the bootstrap world's truth; the lower end clipped at 1); interval
    None when ``windows`` shows a task with fewer than `MIN_WINDOWS` windows."""
    value = max_min_ratio(est_mean)
    short = windows is not None and any(0 < w < MIN_WINDOWS for w in np.asarray(windows))
    ci, widened = ([math.nan] * 2, False) if short else pivot_interval(
        value, [max_min_ratio(b) for b in np.asarray(boot_mean)], value, level)
    ci = [max(ci[0], 1.0), ci[1]]   # a max/min ratio is >= 1 (the estimate too: the interval still holds it)
    return {"value": value, "ci95": [c if math.isfinite(c) else None for c in ci], "widened": widened,
            "estimator": "max/min"}
