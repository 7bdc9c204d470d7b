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

import numpy as np
import torch

from .decoding import CachedModel
from .models import context_length, model_device, output_vocab_size

AUTO_PRIOR_ACCEPTANCE = 0.6  # acceptance assumed for a task before any of its drafts were scored

__all__ = ["AUTO_PRIOR_ACCEPTANCE", "break_even_acceptance", "choose_num_draft", "expected_tokens",
           "speedup_with_verify_cost", "measure_costs", "measure_cost_ratio"]


def expected_tokens(alpha, num_draft: int):
    """(1 - a^(K+1)) / (1 - a): expected tokens per verification under i.i.d. acceptance.
    ``alpha`` a float (returns a float) or an array (elementwise; NaN stays NaN)."""
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


def choose_num_draft(alpha, cost_ratio: float, max_draft: int, verify_cost=None,
                     prior_acceptance: float = AUTO_PRIOR_ACCEPTANCE) -> list[int]:
    """Per task, the K in 1..max_draft that maximises the expected speed-up.

    With ``verify_cost=None`` that is S(alpha_t; K, c) of PAPER.md, which assumes a verifier
    forward over K+1 tokens costs as much as one over a single token.  ``verify_cost[K]`` =
    (time of a verifier forward over K+1 tokens) / (time over 1 token), as measured by
    `measure_costs`, replaces that 1 in the denominator: (1 - a^(K+1)) / ((1 - a)(K c + r_K)).
    ``alpha`` is a [T] tensor or sequence of expected acceptances (NaN: no data yet, use
    ``prior_acceptance``).  Ties go to the smaller K.
    """
    values = [float(a) for a in (alpha.tolist() if isinstance(alpha, torch.Tensor) else alpha)]
    if verify_cost is not None and len(verify_cost) < max_draft + 1:
        raise ValueError(f"verify_cost must have max_draft + 1 = {max_draft + 1} entries, got {len(verify_cost)}")
    def gain(a, k):
        return speedup_with_verify_cost(a, k, cost_ratio, 1.0 if verify_cost is None else verify_cost[k])

    out = []
    for a in values:
        a = prior_acceptance if math.isnan(a) else min(max(a, 0.0), 1.0)
        out.append(max(range(1, max_draft + 1), key=lambda k, a=a: (gain(a, k), -k)))
    return out


def _time_forward(device, fn, repeats: int) -> float:
    times = []
    for _ in range(repeats + 2):  # the first two are warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    times = sorted(times[2:])
    return times[len(times) // 2]


def measure_costs(drafter, verifier, batch_size: int = 1, max_draft: int = 0, context: int = 32,
                  repeats: int = 10) -> dict:
    """Measured costs of one speculative step, relative to one verifier decode step.

    Both models prefill the same random prompt of ``context`` tokens for ``batch_size`` rows;
    then the median time of one-token forwards with the KV cache (the cache is cropped back
    after each, so the context stays fixed) gives ``cost_ratio`` c = drafter / verifier, and
    verifier forwards over n = 1..max_draft+1 tokens give ``verify_cost[K]`` = time(K+1
    tokens) / time(1 token) (``verify_cost[0]`` = 1).  The device is synchronised around
    every timed forward.
    """
    device = model_device(verifier)
    V = min(output_vocab_size(drafter), output_vocab_size(verifier))
    limit = min(x for x in (context_length(drafter), context_length(verifier), 1 << 30) if x)
    context = max(1, min(context, limit - max_draft - 2))
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, V, (batch_size, context), generator=gen).to(device)
    step_times = {}
    with torch.inference_mode():
        for name, model in (("drafter", drafter), ("verifier", verifier)):
            m = CachedModel(model, V)
            m.reset(batch_size, device)
            m.forward(prompt, None, keep=1)
            widths = range(1, max_draft + 2) if name == "verifier" else (1,)
            for n in widths:
                tokens = prompt[:, -n:]

                def step(m=m, tokens=tokens, n=n):
                    m.forward(tokens, None, keep=None if n > 1 else 1)
                    m.crop_end(n)
                    m.pos = m.pos - n

                step_times[(name, n)] = _time_forward(device, step, repeats)
    t1 = step_times[("verifier", 1)]
    return {"cost_ratio": step_times[("drafter", 1)] / t1,
            "verify_cost": [1.0] + [step_times[("verifier", k + 1)] / t1 for k in range(1, max_draft + 1)],
            "verifier_step_s": t1, "drafter_step_s": step_times[("drafter", 1)], "batch_size": batch_size}


def measure_cost_ratio(drafter, verifier, batch_size: int = 1, context: int = 32, repeats: int = 10) -> float:
    """c = (drafter decode-step time) / (verifier decode-step time), measured (`measure_costs`)."""
    return measure_costs(drafter, verifier, batch_size, 0, context, repeats)["cost_ratio"]


def measured_over_predicted(measured, predicted, predicted_rk1) -> dict:
    """Measured speed-up over each model's prediction (1 = the model is right)."""
    def ratio(p):
        return measured / p if p and measured is not None and math.isfinite(measured) else None

    return {"measured_over_predicted": ratio(predicted), "measured_over_predicted_rk1": ratio(predicted_rk1)}
