"""How long speculation should draft: the measured costs of one speculative step, the
model-based speed-up with them, and the draft length K that maximises it.

Two models of the speed-up of one speculative step (K drafts, i.i.d. acceptance alpha):

* PAPER.md's S(alpha; K, c) = E[tokens per step] / (K c + 1): K drafter steps of relative
  cost c and one verifier forward over K+1 tokens that costs as much as one over 1 token;
* S(alpha; K, c, r_K) = E[tokens per step] / (K c + r_K) (`speedup_with_verify_cost`), with
  r_K = (verifier time over K+1 tokens) / (over 1 token) as `measure_costs` measures it.
  On a CPU or with a small batch on a GPU, r_K > 1 and PAPER.md's model over-predicts.

E[tokens per step] = (1 - alpha^(K+1)) / (1 - alpha) (`expected_tokens`).

Where speculation pays at all: S(alpha; K, c, r_K) = 1 at the break-even acceptance
(`break_even_acceptance`), the alpha with E[tokens per step] = K c + r_K; below it the
verifier alone is faster.  When K c + r_K > K + 1 even alpha = 1 cannot pay (inf)."""
from __future__ import annotations

import math
import time
import weakref

import numpy as np
import torch

from .decoding import CachedModel
from .models import context_length, model_device, output_vocab_size

AUTO_PRIOR_ACCEPTANCE = 0.6  # acceptance assumed for a task before any of its drafts were scored

__all__ = ["AUTO_PRIOR_ACCEPTANCE", "break_even_acceptance", "cached_costs", "calibration_widths", "cheapest_widths",
           "choose_num_draft", "clear_cost_cache", "expected_tokens", "min_break_even", "speedup_with_verify_cost",
           "measure_costs", "measure_cost_ratio"]


def expected_tokens(alpha, num_draft: int):
    """(1 - a^(K+1)) / (1 - a): expected tokens per verification under i.i.d. acceptance.
    ``alpha`` a float (returns a float) or an array (elementwise; NaN stays NaN); ``num_draft``
    may be an array too, broadcast against ``alpha``."""
    a = np.asarray(alpha, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        tokens = np.where(a < 1, (1 - a ** (num_draft + 1)) / (1 - a), num_draft + 1.0)
    tokens = np.where(np.isnan(a), np.nan, tokens)
    return float(tokens) if tokens.ndim == 0 else tokens


def speedup_with_verify_cost(alpha, num_draft: int, cost_ratio: float, verify_cost: float = 1.0):
    """S(alpha; K, c, r_K) = E[tokens per step] / (K c + r_K) (see the module docstring).

    ``verify_cost`` = r_K, the verifier's measured time over K+1 tokens divided by its time
    over one (``measure_costs(...)["verify_cost"][K]``); r_K = 1 gives PAPER.md's
    S(alpha; K, c) exactly.  ``alpha`` is a float (returns a float) or an array (returns an
    array, elementwise; NaN stays NaN)."""
    return expected_tokens(alpha, num_draft) / (num_draft * cost_ratio + verify_cost)


def break_even_acceptance(num_draft: int, cost_ratio: float, verify_cost: float = 1.0, tol: float = 1e-12) -> float:
    """The acceptance alpha at which S(alpha; K, c, r_K) = 1: speculation pays above it.

    Solves E[tokens per step](alpha) = K c + r_K by bisection on [0, 1] (E is increasing
    there, from 1 at alpha = 0 to K + 1 at alpha = 1).  Returns 0.0 when even alpha = 0
    pays (K c + r_K <= 1), ``math.inf`` when even alpha = 1 cannot (K c + r_K > K + 1),
    NaN when a cost is NaN.  K = 1 has the closed form c + r_1 - 1."""
    if not isinstance(num_draft, int) or isinstance(num_draft, bool) or num_draft < 1:
        raise ValueError(f"num_draft must be an int >= 1, got {num_draft!r}")
    for name, v in (("cost_ratio", cost_ratio), ("verify_cost", verify_cost)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or v < 0:
            raise ValueError(f"{name} must be a number >= 0, got {v!r}")
    cost = num_draft * float(cost_ratio) + float(verify_cost)
    if math.isnan(cost):
        return math.nan
    if cost <= 1.0:
        return 0.0
    if cost >= num_draft + 1:
        return 1.0 if cost == num_draft + 1 else math.inf
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if expected_tokens(mid, num_draft) < cost:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def min_break_even(cost_ratio: float, verify_cost, max_draft: int) -> float:
    """The smallest break-even acceptance over K = 1..``max_draft`` (`break_even_acceptance`
    with r_K = ``verify_cost[K]``): a task whose acceptance lies below it is fastest with
    the verifier alone.  inf when no K pays even at acceptance 1."""
    return min(break_even_acceptance(k, cost_ratio, float(verify_cost[k])) for k in range(1, max_draft + 1))


def choose_num_draft(alpha, cost_ratio: float, max_draft: int, verify_cost=None,
                     prior_acceptance: float = AUTO_PRIOR_ACCEPTANCE, min_draft: int = 1) -> list[int]:
    """Per task, the K in min_draft..max_draft that maximises the expected speed-up.

    With ``verify_cost=None`` that is S(alpha_t; K, c) of PAPER.md, which assumes a verifier
    forward over K+1 tokens costs as much as one over a single token.  ``verify_cost[K]`` =
    (time of a verifier forward over K+1 tokens) / (time over 1 token), as measured by
    `measure_costs`, replaces that 1 in the denominator: (1 - a^(K+1)) / ((1 - a)(K c + r_K)).
    ``alpha`` is a [T] tensor or sequence of expected acceptances (NaN: no data yet, use
    ``prior_acceptance``).  Ties go to the smaller K.  ``min_draft=0`` admits K = 0, the
    verifier alone (speed-up 1): chosen when no K is expected to beat it.
    """
    values = np.array([float(a) for a in (alpha.tolist() if isinstance(alpha, torch.Tensor) else alpha)],
                      dtype=np.float64)
    if verify_cost is not None and len(verify_cost) < max_draft + 1:
        raise ValueError(f"verify_cost must have max_draft + 1 = {max_draft + 1} entries, got {len(verify_cost)}")
    if values.size == 0:
        return []
    a = np.clip(np.where(np.isnan(values), prior_acceptance, values), 0.0, 1.0)[:, None]   # [T, 1]
    ks = np.arange(1, max_draft + 1)
    r = np.ones(max_draft) if verify_cost is None else np.asarray(verify_cost[1:max_draft + 1], dtype=np.float64)
    gain = expected_tokens(a, ks) / (ks * cost_ratio + r)          # [T, K_max]
    if min_draft == 0:
        gain = np.concatenate([np.ones_like(a), gain], axis=1)    # K = 0: the verifier alone
        return np.argmax(gain, axis=1).tolist()
    return (np.argmax(gain, axis=1) + 1).tolist()  # the first maximum: ties go to the smaller K


PAD_MIN_GAIN = 0.05   # pad a verifier forward only when the wider one is measured this much cheaper


def cheapest_widths(verify_cost, measured_widths, min_gain: float = PAD_MIN_GAIN) -> tuple[list[int], list[float]]:
    """For every K in 0..K_max, the verifier width to run K drafts at, and its cost.

    ``verify_cost[k]`` = r_k, the measured time of a forward over k+1 tokens over one token's
    (`measure_costs`); ``measured_widths``: the widths actually timed (the others are
    interpolated).  K drafts need a forward over K+1 tokens, but a wider forward gives the
    same logits for them (`specfair.decoding.CachedModel.forward_padded`), and where the
    matrix kernels switch (MKL in fp32 on a CPU: 3 rows can cost more than 4) a wider one
    can be cheaper.  Returns (widths, costs): ``widths[K]`` = the timed width w >= K+1 of the
    least r_{w-1} when that is at least ``min_gain`` below r_K (measurement noise is not a
    reason to pad), else K+1; ``costs[K]`` = r at that width, the cost the speed-up model
    should use for K."""
    r = [float(x) for x in verify_cost]
    timed = sorted(int(w) for w in measured_widths)
    widths, costs = [], []
    for k in range(len(r)):
        best = min((w for w in timed if k + 1 < w <= len(r)), key=lambda w: r[w - 1], default=k + 1)
        w = best if r[best - 1] < (1 - min_gain) * r[k] else k + 1
        widths.append(w)
        costs.append(r[w - 1])
    return widths, costs


SMALL_WIDTHS = 5   # verifier widths up to this one are all timed (see calibration_widths)


def calibration_widths(max_draft: int) -> list[int]:
    """The verifier widths `measure_costs` times by default: every width up to
    ``SMALL_WIDTHS`` = 5, then the middle one and K_max + 1; the r_K in between are
    interpolated linearly in the width.  Small widths are where the matrix-multiply kernels
    switch: on this project's CPU (MKL, fp32) a linear layer over 3 rows costs more than
    over 4 (it reads the weights once per row up to 3 rows), so r_2 > r_3 and no
    interpolation would see it; past that the time grows about linearly on a CPU and stays
    flat then bends on a GPU at small batch, which the middle anchor follows.  At K_max = 8
    this times widths 1-5 and 9 (24 tokens' worth of forwards instead of 45)."""
    top = max_draft + 1
    return sorted({w for w in range(1, min(top, SMALL_WIDTHS) + 1)} | {(max_draft + 3) // 2, top})


def _interpolate(times: dict[int, float], width: int) -> float:
    """Piecewise-linear interpolation of ``times`` {width: seconds} at ``width``."""
    if width in times:
        return times[width]
    xs = sorted(times)
    hi = next(x for x in xs if x > width)
    lo = max(x for x in xs if x < width)
    return times[lo] + (times[hi] - times[lo]) * (width - lo) / (hi - lo)


def measure_costs(drafter, verifier, batch_size: int = 1, max_draft: int = 0, context: int = 32,
                  repeats: int = 3, widths=None, budget_s: float = 1.0, max_repeats: int = 20,
                  slow_round_s: float = 2.0) -> dict:
    """Measured costs of one speculative step, relative to one verifier decode step.

    Both models prefill the same random prompt of ``context`` tokens for ``batch_size`` rows;
    then one-token forwards with the KV cache (the cache is cropped back after each, so the
    context stays fixed) give ``cost_ratio`` c = drafter / verifier, and verifier forwards
    over n tokens, n in ``widths`` (default `calibration_widths`), give ``verify_cost[K]``
    = time(K+1 tokens) / time(1 token) (``verify_cost[0]`` = 1; widths not timed are
    interpolated linearly, ``measured_widths`` lists the timed ones).

    Timing: first one one-token forward of each model over a one-token context (a warm-up
    that also estimates a round: the widths' sum times the verifier's one-token time).  Fast models (a round
    estimated under ``slow_round_s``) are timed in rounds that each time every (model,
    width) once, round-robin, so a burst of load on a shared machine hits one round of every
    width rather than every repeat of one width; the first round is a warm-up, then at least
    ``repeats`` rounds, and more while the timed rounds took under ``budget_s`` seconds in
    all (up to ``max_repeats``).  Each figure is the *minimum* over the timed rounds (noise
    only ever adds time).  A slow model (a forward of a large model on a CPU: noise is
    small beside it, and the full schedule would take minutes) keeps the one-token context
    (its prefill would cost more than the timings: ``context`` in the result says which was
    used) and gets one timed forward per width: widths 1, 2 and K_max + 1 always, the ones
    in between in increasing order while the timed ones stay within ``slow_round_s``, the
    rest interpolated (``repeats`` is then 1).  The device is synchronised around every
    timed forward.  `cached_costs` keeps the result per pair of models.
    """
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    widths = calibration_widths(max_draft) if widths is None else sorted(set(widths) | {1, max_draft + 1})
    if any(not isinstance(w, int) or w < 1 or w > max_draft + 1 for w in widths):
        raise ValueError(f"widths must be ints in [1, max_draft + 1 = {max_draft + 1}], got {widths!r}")
    device = model_device(verifier)
    V = min(output_vocab_size(drafter), output_vocab_size(verifier))
    limit = min(x for x in (context_length(drafter), context_length(verifier), 1 << 30) if x)
    context = max(1, min(context, limit - max_draft - 2))
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, V, (batch_size, context), generator=gen).to(device)
    tokens = torch.randint(0, V, (batch_size, max(widths)), generator=gen).to(device)
    with torch.inference_mode():
        t0 = time.perf_counter()
        steps, models = _calibration_steps(drafter, verifier, prompt[:, :1], tokens, V, widths)
        warm = {key: _time_forward(device, step) for key, step in steps.items() if key[1] == 1}
        slow = warm[("verifier", 1)] * sum(widths) + warm[("drafter", 1)] > slow_round_s
        if not slow and context > 1:   # the full context for a fast model
            for m in models:
                m.forward(prompt[:, 1:], None, keep=1)
        setup_s = time.perf_counter() - t0
        if slow:
            times, repeats = _timed_once(device, steps, warm, slow_round_s), 1
        else:
            times, repeats = _timed_rounds(device, steps, repeats, budget_s, max_repeats)
    t1 = times[("verifier", 1)]
    vt = {n: t for (name, n), t in times.items() if name == "verifier"}
    return {"cost_ratio": times[("drafter", 1)] / t1,
            "verify_cost": [1.0] + [_interpolate(vt, k + 1) / t1 for k in range(1, max_draft + 1)],
            "verifier_step_s": t1, "drafter_step_s": times[("drafter", 1)], "batch_size": batch_size,
            "measured_widths": sorted(vt), "repeats": repeats, "context": 1 if slow else context,
            "setup_s": setup_s}


def _calibration_steps(drafter, verifier, prefix, tokens, V: int, widths) -> tuple[dict, list]:
    """Both models with ``prefix`` cached, and {(model name, width): a forward over the first
    ``width`` of ``tokens`` that rolls itself back}."""
    steps, models = {}, []
    for name, model in (("drafter", drafter), ("verifier", verifier)):
        m = CachedModel(model, V)
        m.reset(prefix.shape[0], prefix.device)
        m.forward(prefix, None, keep=1)
        models.append(m)
        for n in (widths if name == "verifier" else (1,)):
            def step(m=m, tokens=tokens[:, :n], n=n):
                m.forward(tokens, None, keep=None if n > 1 else 1)
                m.crop_end(n)
                m.pos = m.pos - n

            steps[(name, n)] = step
    return steps, models


def _timed_rounds(device, steps: dict, repeats: int, budget_s: float, max_repeats: int) -> tuple[dict, int]:
    """Round-robin rounds (a warm-up, then >= ``repeats``, more within ``budget_s``): the
    minimum time per step, and the number of timed rounds."""
    times = dict.fromkeys(steps, math.inf)
    spent, done = 0.0, -1   # round 0 warms up
    while done < repeats or (spent < budget_s and done < max_repeats):
        for key, step in steps.items():
            t = _time_forward(device, step)
            if done >= 0:
                times[key] = min(times[key], t)
                spent += t
        done += 1
    return times, done


def _timed_once(device, steps: dict, warm: dict, limit_s: float) -> dict:
    """One timed forward per step: the one-token forwards are the first ones (``warm``; a slow
    model's first call costs next to nothing extra), the verifier at width 2 and at the
    widest width (so every other r_K is interpolated, never extrapolated), then the widths in
    between in increasing order while the time spent (and the next width's estimate) stays
    within ``limit_s``."""
    times = dict(warm)
    t1 = times[("verifier", 1)]
    wide = sorted(k[1] for k in steps if k[0] == "verifier" and k[1] > 1)
    for w in ({2, max(wide)} & set(wide)) if wide else ():
        times[("verifier", w)] = _time_forward(device, steps[("verifier", w)])
    spent = sum(times.values())
    for w in wide:
        if ("verifier", w) in times:
            continue
        if spent + t1 * w > limit_s:
            break
        times[("verifier", w)] = _time_forward(device, steps[("verifier", w)])
        spent += times[("verifier", w)]
    return times


def _time_forward(device, fn) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


# Costs per pair of models, reused by every generator of the same pair (see `cached_costs`).
_COST_CACHE: dict[tuple, tuple] = {}


def _model_key(model) -> tuple:
    p = next(model.parameters(), None)
    return (id(model), None if p is None else (str(p.device), str(p.dtype)))


def cached_costs(drafter, verifier, batch_size: int, max_draft: int) -> dict:
    """`measure_costs` once per pair of model *objects*, device and dtype (a model moved by
    ``.to()`` is measured again), batch size and K_max; later calls, from any generator of
    the same pair, return the same dict without timing anything.  The cache holds weak
    references, so it never keeps a model alive, and an id reused by a new model is not
    mistaken for the old one.  `clear_cost_cache` empties it."""
    key = (_model_key(drafter), _model_key(verifier), batch_size, max_draft)
    hit = _COST_CACHE.get(key)
    if hit is not None and hit[0]() is drafter and hit[1]() is verifier:
        return hit[2]
    costs = measure_costs(drafter, verifier, batch_size, max_draft)
    for k in [k for k, v in _COST_CACHE.items() if v[0]() is None or v[1]() is None]:
        del _COST_CACHE[k]   # entries of models that are gone
    _COST_CACHE[key] = (weakref.ref(drafter), weakref.ref(verifier), costs)
    return costs


def clear_cost_cache() -> None:
    """Forget every cached measurement (`cached_costs`): the next generator times again."""
    _COST_CACHE.clear()


def measure_cost_ratio(drafter, verifier, batch_size: int = 1, context: int = 32, repeats: int = 3) -> float:
    """c = (drafter decode-step time) / (verifier decode-step time), measured (`measure_costs`)."""
    return measure_costs(drafter, verifier, batch_size, 0, context, repeats)["cost_ratio"]


def measured_over_predicted(measured, predicted, predicted_rk1) -> dict:
    """Measured speed-up over each model's prediction (1 = the model is right)."""
    def ratio(p):
        return measured / p if p and measured is not None and math.isfinite(measured) else None

    return {"measured_over_predicted": ratio(predicted), "measured_over_predicted_rk1": ratio(predicted_rk1)}
