"""The drafter's training objectives (specfair.objectives): the LK losses through
token_divergence on every backend, the adaptive KL/TV hybrid, and per-task objectives."""
from __future__ import annotations

import math

import pytest
import torch

from specfair import objectives
from specfair_kernels import backends

BACKENDS = ["torch"]
if backends.load_cpp_extension()[0] is not None:
    BACKENDS.append("cpp")
try:
    import triton  # noqa: F401
    BACKENDS.append("triton")
except ImportError:
    pass


def logits(B=3, T=4, V=29, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, V, generator=g, dtype=dtype) * 2, torch.randn(B, T, V, generator=g, dtype=dtype) * 2)


def ref(d, t, kind, T=1.0):
    """float64 per-token values by plain torch (autograd gives their gradients)."""
    q, p = torch.softmax(d / T, -1), torch.softmax(t / T, -1)
    if kind == "kl":
        return (p * (torch.log_softmax(t / T, -1) - torch.log_softmax(d / T, -1))).sum(-1)
    if kind == "tv":
        return 0.5 * (p - q).abs().sum(-1)
    if kind == "neg_log_alpha":
        return -torch.log(torch.minimum(p, q).sum(-1))
    raise AssertionError(kind)


def rows_float64(monkeypatch):
    """token_divergence as the float64 torch reference rows (the API takes fp32/bf16/fp16 only):
    what gradcheck needs."""
    from specfair_kernels import autograd as A

    def td(draft, target, kind, temperature, reduction, mask, backend):
        V = draft.shape[-1]
        v = A.token_divergence_rows("torch", draft.reshape(-1, V), target.reshape(-1, V), kind, temperature,
                                    inplace_backward=False).reshape(mask.shape)
        return torch.where(mask, v, torch.zeros((), dtype=v.dtype))

    monkeypatch.setattr(objectives.sk, "token_divergence", td)


def test_hybrid_is_lambda_kl_plus_one_minus_lambda_tv_with_their_gradients():
    d, t = logits(dtype=torch.float32)
    mask = torch.ones(d.shape[:-1], dtype=torch.bool)
    mask[0, 0] = False
    x = d.clone().requires_grad_(True)
    vals, info = objectives.per_token(x, t, "kl_tv", temperature=0.9, mask=mask, backend="torch", eta=2.0)
    d64, t64 = d.double(), t.double()
    tv, kl = ref(d64, t64, "tv", 0.9), ref(d64, t64, "kl", 0.9)
    lam = math.exp(-2.0 * float((1 - tv)[mask].mean()))
    assert info["lambda_kl_tv"] == pytest.approx(lam, rel=1e-5)
    torch.testing.assert_close(vals.double(), torch.where(mask, lam * kl + (1 - lam) * tv, 0.0), rtol=1e-5, atol=1e-6)
    w = torch.rand(mask.shape)
    (vals * w).sum().backward()
    y = d64.clone().requires_grad_(True)
    ((lam * ref(y, t64, "kl", 0.9) + (1 - lam) * ref(y, t64, "tv", 0.9)) * w * mask).sum().backward()
    torch.testing.assert_close(x.grad.double(), y.grad, rtol=1e-4, atol=1e-6)
    # lambda falls as acceptance rises: KL first, TV later
    assert objectives.hybrid_lambda(torch.full((4,), 0.9), torch.ones(4, dtype=torch.bool), 3.0) > \
        objectives.hybrid_lambda(torch.full((4,), 0.1), torch.ones(4, dtype=torch.bool), 3.0)


@pytest.mark.parametrize("objective", ["neg_log_alpha", "kl_tv"])
def test_objective_gradcheck_float64(objective, monkeypatch):
    """float64 gradcheck at a tiny shape; for kl_tv with lambda held at the value of the step
    (it is detached by design)."""
    rows_float64(monkeypatch)
    monkeypatch.setattr(objectives, "hybrid_lambda", lambda tv, mask, eta: 0.37)
    d, t = logits(B=2, T=2, V=9, seed=3)
    t[0, 1, 4] = float("-inf")
    mask = torch.tensor([[True, True], [False, True]])

    def f(x):
        return objectives.per_token(x, t, objective, temperature=0.8, mask=mask, backend="torch")[0]

    torch.autograd.gradcheck(f, (d.clone().requires_grad_(True),), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("objective", ["neg_log_alpha", "kl_tv"])
def test_every_backend_gives_the_same_objective(objective):
    d, t = logits(dtype=torch.float32, seed=5)
    mask = torch.ones(d.shape[:-1], dtype=torch.bool)
    mask[1, 2] = False
    out = {}
    for b in BACKENDS:
        x = d.clone().requires_grad_(True)
        vals, _ = objectives.per_token(x, t, objective, temperature=1.1, mask=mask, backend=b)
        vals.sum().backward()
        out[b] = (vals.detach(), x.grad)
    assert len(out) >= 2, "needs a second backend to compare"
    want = ref(d.double(), t.double(), "neg_log_alpha", 1.1) if objective == "neg_log_alpha" else None
    for v, g in out.values():
        torch.testing.assert_close(v, out["torch"][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g, out["torch"][1], rtol=1e-5, atol=1e-7)
        if want is not None:
            torch.testing.assert_close(v.double(), torch.where(mask, want, 0.0), rtol=1e-5, atol=1e-6)


def test_per_task_objectives_use_each_rows_own_objective(monkeypatch):
    d, t = logits(B=4, seed=7)
    rows_float64(monkeypatch)
    mask = torch.ones(d.shape[:-1], dtype=torch.bool)
    rows = torch.tensor([0, 1, 0, 2])
    x = d.clone().requires_grad_(True)
    vals, info = objectives.per_token(x, t, "kl", temperature=1.0, mask=mask, backend="torch", task_rows=rows,
                                      task_objectives={1: "neg_log_alpha", 2: "kl_tv"})
    torch.testing.assert_close(vals[[0, 2]], ref(d[[0, 2]], t[[0, 2]], "kl"))
    torch.testing.assert_close(vals[1], ref(d[1], t[1], "neg_log_alpha"))
    lam = info["lambda_kl_tv"]           # from row 3's tokens only
    torch.testing.assert_close(vals[3], lam * ref(d[3], t[3], "kl") + (1 - lam) * ref(d[3], t[3], "tv"))
    vals.sum().backward()
    y = d.clone().requires_grad_(True)
    ref(y[1], t[1], "neg_log_alpha").sum().backward()
    torch.testing.assert_close(x.grad[1], y.grad[1])
    with pytest.raises(ValueError, match="objective"):
        objectives.per_token(x, t, "lk", temperature=1.0, mask=mask)
