"""The drafter's training objectives, per token, all through `specfair_kernels.token_divergence`.

``kl``             KL(p || q): the usual distillation loss (same gradient as CE).
``ce``             CE(p, q) = KL + H(p).
``tv``             TV = 1 - alpha: acceptance itself; its gradient vanishes where q > p.
``neg_log_alpha``  -log alpha, an LK loss (arXiv 2602.23881): TV's gradient divided by alpha,
                   so tokens the drafter gets badly wrong pull hardest.  A kernel kind of
                   `token_divergence` (every backend).
``kl_tv``          the LK KL/TV hybrid, lambda * KL + (1 - lambda) * TV with an adaptive
                   lambda = exp(-eta * mean alpha): KL (whose gradient is informative far from
                   the target) dominates while acceptance is low, TV (acceptance itself) takes
                   over as it rises.  mean alpha is the batch's (unmasked tokens, detached, so
                   lambda is a constant of each step: the gradient is lambda grad KL +
                   (1 - lambda) grad TV).  The paper's schedule is described as adaptive in
                   acceptance; the exact form above (and ``eta``, default 3) is our choice.

`per_token` returns the per-token values (with the gradient) of one objective, or of one per
task (``task_objectives``: task index -> objective; rows of the other tasks use the default).
"""
from __future__ import annotations

import math

import torch

import specfair_kernels as sk

__all__ = ["OBJECTIVES", "WEIGHT_KINDS", "per_token", "hybrid_lambda"]

OBJECTIVES = ("kl", "ce", "tv", "neg_log_alpha", "kl_tv")
WEIGHT_KINDS = ("kl", "ce", "tv", "neg_log_alpha")
"""Kinds the s-CDF task weights D_t may come from (the per-token divergences of a kernel kind)."""


def hybrid_lambda(tv_values: torch.Tensor, mask: torch.Tensor, eta: float) -> float:
    """lambda = exp(-eta * mean alpha) over the unmasked tokens (1 - tv; detached)."""
    n = int(mask.sum())
    if n == 0:
        return 1.0
    alpha_bar = float((1 - tv_values.detach()[mask].double()).sum()) / n
    return math.exp(-eta * alpha_bar)


def _one(draft, target, objective, temperature, mask, backend, eta):
    """Per-token values of one objective (0 where masked) and, for kl_tv, its lambda."""
    if objective != "kl_tv":
        return sk.token_divergence(draft, target, kind=objective, temperature=temperature, reduction="none",
                                   mask=mask, backend=backend), None
    kl = sk.token_divergence(draft, target, kind="kl", temperature=temperature, reduction="none", mask=mask,
                             backend=backend)
    tv = sk.token_divergence(draft, target, kind="tv", temperature=temperature, reduction="none", mask=mask,
                             backend=backend)
    lam = hybrid_lambda(tv, mask, eta)
    return lam * kl + (1 - lam) * tv, lam


def per_token(draft_logits: torch.Tensor, target_logits: torch.Tensor, objective: str, *, temperature: float,
              mask: torch.Tensor, backend: str = "auto", eta: float = 3.0, task_rows: torch.Tensor | None = None,
              task_objectives: dict[int, str] | None = None) -> tuple[torch.Tensor, dict]:
    """Per-token objective values ``[B, T]`` (differentiable w.r.t. ``draft_logits``; 0 where
    ``mask`` is False) and an info dict (``lambda`` per kl_tv objective used).

    ``task_rows`` [B] gives each row's task index; rows whose task is in ``task_objectives``
    use that objective, the others ``objective``."""
    for o in {objective, *(task_objectives or {}).values()}:
        if o not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {o!r}")
    if not task_objectives:
        vals, lam = _one(draft_logits, target_logits, objective, temperature, mask, backend, eta)
        return vals, ({} if lam is None else {f"lambda_{objective}": lam})
    if task_rows is None:
        raise ValueError("task_objectives needs task_rows")
    row_obj = [task_objectives.get(int(t), objective) for t in task_rows.tolist()]
    out, info = None, {}
    for o in dict.fromkeys(row_obj):
        rows = torch.tensor([i for i, r in enumerate(row_obj) if r == o], device=draft_logits.device)
        vals, lam = _one(draft_logits[rows], target_logits[rows], o, temperature, mask[rows], backend, eta)
        if out is None:
            out = torch.zeros(mask.shape, dtype=vals.dtype, device=draft_logits.device)
        out = out.index_put((rows,), vals)
        if lam is not None:
            info[f"lambda_{o}"] = lam
    return out, info
