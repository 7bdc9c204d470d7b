"""The one factory of `verify` inputs for the kernel tests: the ``verify_case`` fixture.

``verify_case(seed, *, B, K, V, ...)`` returns a dict of ``sk.verify`` keyword arguments
(see `make_verify_case` for the options).  It is a session-scoped fixture, not a helper
module, because pytest imports the tests with ``--import-mode=importlib``: test folders
are not on ``sys.path``, so ``import cases`` would fail, while pytest hands fixtures from
this conftest to every test beside it.  Session scope lets hypothesis tests use it too
(hypothesis rejects function-scoped fixtures).
"""
from __future__ import annotations

import pytest
import torch

NEG_INF = float("-inf")
TOKENS = ("uniform", "from_q", "likely")
DRAFTS = ("logits", "correlated", "equal", "onehot")


def mask_some(x: torch.Tensor, frac: float, g: torch.Generator) -> torch.Tensor:
    """Set about `frac` of the entries to -inf, keeping >= 1 finite entry per distribution."""
    if frac == 0 or x.shape[-1] < 2:
        return x
    mask = torch.rand(x.shape, generator=g) < frac
    keep = torch.rand(x.shape, generator=g).argmax(-1, keepdim=True)
    mask.scatter_(-1, keep, False)
    return x.masked_fill(mask, NEG_INF)


def make_verify_case(seed, *, B, K, V, tdtype=torch.float32, ddtype=torch.float32, draft="logits", scale=3.0,
                     clamp=None, mask_frac=0.0, tokens="uniform", ragged=True, temps=(0.0, 0.5, 1.0, 2.0),
                     num_tasks=None, device="cpu") -> dict:
    """Random `verify` inputs, drawn on the CPU and moved to ``device``.

    seed : int, or a torch.Generator whose stream continues (several cases in one test)
    draft : "logits" (independent of the target), "correlated" (0.5 * target + unit
        noise), "equal" (draft logits = target[:, :K]), "onehot" (draft_logits None)
    scale : standard deviation of the logits; clamp : bound on |logit|
    mask_frac : about this fraction of the logits is -inf, never a whole distribution
    tokens : "uniform" in [0, V); "from_q" sampled from softmax of the draft logits (of
        the target's for "onehot"); "likely": per case, q's argmax or samples of q, so
        that drafts are often accepted
    ragged : num_draft uniform in [0, K] with rows 0 and 1 at 0 and K (else K everywhere);
        draft tokens after num_draft are -1
    temps : per-row temperatures drawn from these values (0 is greedy)
    num_tasks : also draw task_ids in [0, num_tasks)
    """
    if draft not in DRAFTS or tokens not in TOKENS:
        raise ValueError(f"draft must be one of {DRAFTS} and tokens one of {TOKENS}")
    g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    t = torch.randn(B, K + 1, V, generator=g) * scale
    noise = torch.randn(B, K, V, generator=g)
    if clamp is not None:
        t = t.clamp(-clamp, clamp)
    t = mask_some(t, mask_frac, g)
    if draft == "equal":
        d = t[:, :K].clone()
    elif draft == "correlated":
        d = 0.5 * t[:, :K] + noise
    else:
        d = noise * scale
        if clamp is not None:
            d = d.clamp(-clamp, clamp)
        d = mask_some(d, mask_frac, g)

    src = t[:, :K] if draft == "onehot" else d  # the distribution the drafts come from
    if tokens == "uniform" or K == 0 or V == 1:
        x = torch.randint(0, V, (B, K), generator=g)
    else:
        x = torch.multinomial(torch.softmax(src.float(), -1).reshape(B * K, V), 1, generator=g).reshape(B, K)
        if tokens == "likely" and torch.rand((), generator=g) < 0.5:
            x = src.float().argmax(-1)
    if ragged:
        nd = torch.randint(0, K + 1, (B,), generator=g)
        if B >= 2:
            nd[0], nd[1] = 0, K  # the ragged extremes are always present
    else:
        nd = torch.full((B,), K, dtype=torch.int64)
    x = torch.where(torch.arange(K)[None, :] < nd[:, None], x, -1)
    temp = torch.tensor(temps, dtype=torch.float32)[torch.randint(0, len(temps), (B,), generator=g)]
    case = dict(target_logits=t.to(tdtype), draft_logits=None if draft == "onehot" else d.to(ddtype),
                draft_tokens=x, num_draft=nd, temperature=temp,
                seed=torch.randint(-2**62, 2**62, (B,), generator=g),
                step=torch.randint(0, 1000, (B,), generator=g))
    if num_tasks is not None:
        case["task_ids"] = torch.randint(0, num_tasks, (B,), generator=g)
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in case.items()}


@pytest.fixture(scope="session")
def verify_case():
    return make_verify_case
