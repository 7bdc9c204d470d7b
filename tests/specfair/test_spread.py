"""The audit's noise-corrected between-task spread (`specfair.spread.corrected_spread`).

Synthetic per-window data with a known between-task variance: the tasks' true means are
fixed, each window's mean scatters around its task's true mean, windows have unequal sizes
(the last window of a task is short, as in `teacher_forced.token_windows`)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from specfair import spread

T, WINDOWS, TOKENS = 10, 16, 256   # 16 windows: the audit default (4096 tokens, windows of 256)


def _truth(var: float) -> np.ndarray:
    """Fixed true task means with population variance exactly ``var``."""
    z = np.linspace(-1, 1, T)
    z = (z - z.mean()) / z.std()
    return 0.6 + math.sqrt(var) * z


def _draw(rng, mu, windows=WINDOWS, noise=0.08):
    task = np.repeat(np.arange(T), windows)
    tokens = np.tile(np.r_[np.full(windows - 1, TOKENS), TOKENS // 2], T).astype(float)
    window_mean = mu[task] + rng.normal(0, noise, task.size) * np.sqrt(TOKENS / tokens)
    return task, tokens, {"alpha": window_mean * tokens}


def _spread(rng, mu, n_boot=200, windows=WINDOWS):
    task, tokens, sums = _draw(rng, mu, windows)
    est = spread.task_moments(task, tokens, sums, T)
    boot = spread.resample_task_moments(task, tokens, sums, T, n_boot, rng)
    return spread.corrected_spread(est["alpha"], boot["alpha"]), est


@pytest.mark.parametrize("var", [0.0, 0.004])
def test_corrected_variance_is_unbiased_and_its_interval_covers(var):
    rng = np.random.default_rng(1)
    mu = _truth(var)
    draws = 300
    raw, uncorrected, covered = [], [], 0
    for _ in range(draws):
        r, _ = _spread(rng, mu)
        raw.append(r["value_unclipped"])
        uncorrected.append(r["uncorrected"])
        lo, hi = r["ci95"]
        assert lo <= r["value"] <= hi and hi > lo  # every interval contains its estimate, never zero-width
        assert r["value"] >= 0 and lo >= 0
        covered += lo <= var <= hi
    raw = np.asarray(raw)
    se = raw.std(ddof=1) / math.sqrt(draws)
    assert abs(raw.mean() - var) < 4 * se, (raw.mean(), var, se)
    # the uncorrected variance of task means is biased upward by the windows' noise
    assert np.mean(uncorrected) - var > 4 * np.std(uncorrected) / math.sqrt(draws)
    assert covered / draws >= 0.90, covered / draws


def test_corrected_variance_matches_its_formula():
    mean = np.array([0.5, 0.6, 0.8])
    se2 = np.array([0.001, 0.002, 0.003])
    corrected, raw = spread.corrected_variance(mean, se2)
    assert raw == pytest.approx(np.var(mean))
    assert corrected == pytest.approx(np.var(mean) - 2 / 3 * se2.mean())
    # a transformed figure: the standard error by the delta method
    c2, r2 = spread.corrected_variance(mean, se2, lambda x: 2 * x)
    assert r2 == pytest.approx(4 * np.var(mean)) and c2 == pytest.approx(4 * corrected)


def test_standard_error_of_equal_windows_is_the_usual_one():
    v = np.array([0.2, 0.5, 0.9, 0.4])
    est = spread.task_moments(np.zeros(4, int), np.full(4, 10.0), {"x": v * 10}, 1)
    mean, se2 = est["x"]
    assert mean[0] == pytest.approx(v.mean()) and se2[0] == pytest.approx(v.var(ddof=1) / 4)


def test_one_window_task_gives_no_interval():
    rng = np.random.default_rng(0)
    task = np.r_[0, 1, 1, 2, 2]
    tokens = np.full(5, 256.0)
    sums = {"alpha": rng.uniform(0.4, 0.8, 5) * 256}
    est = spread.task_moments(task, tokens, sums, 3)
    assert spread.few_window_tasks(est["windows"], ["en", "fr", "ja"]) == ["en"]
    boot = spread.resample_task_moments(task, tokens, sums, 3, 50, rng)
    r = spread.corrected_spread(est["alpha"], boot["alpha"])
    assert r["value"] is None and r["ci95"] == [None, None]
    q = spread.ratio_spread(est["alpha"][0], boot["alpha"][0], windows=est["windows"])
    assert math.isfinite(q["value"]) and q["ci95"] == [None, None]


def test_pivot_interval_contains_its_estimate():
    # bootstrap samples all above the truth: the basic interval would miss the estimate
    ci, widened = spread.pivot_interval(1.0, np.linspace(2.0, 3.0, 100), 1.5)
    assert widened and ci[0] <= 1.0 <= ci[1]
    ci, widened = spread.pivot_interval(1.0, np.linspace(0.5, 1.5, 101), 1.0)
    assert not widened and ci == pytest.approx([0.525, 1.475])
