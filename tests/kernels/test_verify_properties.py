"""Property tests of `verify` (hypothesis): structural invariants and divergence values on
the torch reference, and exact agreement of every other available backend with it.

Logits are bounded (|x| <= 4, temperature >= 0.1), so no probability underflows in fp32:
the support of p and q is exactly the set of finite logits, in fp32 and in float64 alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import specfair_kernels as sk
from specfair_kernels.stats import DIVERGENCE_FIELDS

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TOL = 1e-5


@dataclass
class Case:
    target: torch.Tensor  # [B, K+1, V]
    draft: torch.Tensor | None  # [B, K, V]
    tokens: torch.Tensor  # [B, K]
    num_draft: torch.Tensor | None  # [B] or None (= K)
    temperature: float | torch.Tensor
    seed: int | torch.Tensor
    step: int | torch.Tensor

    @property
    def shape(self):
        return tuple(self.target.shape)

    def nd(self) -> torch.Tensor:
        B, K1, _ = self.target.shape
        return torch.full((B,), K1 - 1, dtype=torch.int64) if self.num_draft is None else self.num_draft.long()

    def temps(self) -> torch.Tensor:
        B = self.target.shape[0]
        t = self.temperature
        return (t if isinstance(t, torch.Tensor) else torch.full((B,), float(t))).float()

    def to(self, device):
        mv = lambda x: x.to(device) if isinstance(x, torch.Tensor) else x  # noqa: E731
        return Case(*(mv(getattr(self, f)) for f in
                      ("target", "draft", "tokens", "num_draft", "temperature", "seed", "step")))

    def kwargs(self):
        return dict(num_draft=self.num_draft, temperature=self.temperature, seed=self.seed, step=self.step)


@st.composite
def cases(draw, verify_case, max_b=8, max_k=5, max_v=50):
    """A `Case`: shapes, dtypes, masks and scales drawn by hypothesis, tensors by `verify_case`."""
    B = draw(st.integers(1, max_b))
    K = draw(st.integers(0, max_k))
    V = draw(st.integers(1, max_v))
    tdtype, ddtype = draw(st.sampled_from(DTYPES)), draw(st.sampled_from(DTYPES))
    one_hot = draw(st.booleans())
    ragged = draw(st.booleans())
    frac = draw(st.sampled_from([0.0, 0.0, 0.3, 0.7]))
    scale = draw(st.sampled_from([0.5, 2.0, 4.0]))
    temp_value = st.one_of(st.just(0.0), st.floats(0.1, 3.0))
    per_row_temp = draw(st.booleans())
    temps = [draw(temp_value) for _ in range(B)] if per_row_temp else draw(temp_value)
    drafts_from_q = draw(st.booleans())
    data_seed = draw(st.integers(0, 2**31 - 1))
    seed = (draw(st.lists(st.integers(-2**63, 2**63 - 1), min_size=B, max_size=B))
            if draw(st.booleans()) else draw(st.integers(0, 2**62)))
    step = draw(st.one_of(st.integers(0, 50), st.integers(0, 2**40)))

    c = verify_case(data_seed, B=B, K=K, V=V, tdtype=tdtype, ddtype=ddtype, draft="onehot" if one_hot else "logits",
                    scale=scale, clamp=4.0, mask_frac=frac,
                    tokens="from_q" if drafts_from_q and not one_hot else "uniform", ragged=ragged)
    temperature = torch.tensor(temps, dtype=torch.float32) if per_row_temp else temps
    seed_t = torch.tensor(seed, dtype=torch.int64) if isinstance(seed, list) else seed
    num_draft = c["num_draft"] if ragged else None  # None: the API's default, K
    return Case(c["target_logits"], c["draft_logits"], c["draft_tokens"], num_draft, temperature, seed_t, step)


def _tau(case: Case) -> torch.Tensor:
    t = case.temps()
    return torch.where(t == 0, torch.ones_like(t), t).double()  # greedy rows: untempered


def _log_probs64(case: Case):
    """float64 log p [B, K+1, V] and log q [B, K, V] (one-hot: 0 at the draft, -inf elsewhere)."""
    tau = _tau(case)[:, None, None]
    logp = torch.log_softmax(case.target.cpu().double() / tau, -1)
    B, K1, V = case.shape
    if case.draft is None:
        hit = torch.arange(V)[None, None, :] == case.tokens.cpu()[..., None]
        logq = torch.where(hit, 0.0, float("-inf")).double()
    else:
        logq = torch.log_softmax(case.draft.cpu().double() / tau, -1)
    return logp, logq


def _reference_divergences(case: Case):
    """alpha, kl, ce, entropy in float64 [B, K], 0 at padded positions."""
    logp, logq = _log_probs64(case)
    B, K1, V = case.shape
    K = K1 - 1
    logp = logp[:, :K]
    p, q = logp.exp(), logq.exp()
    pos = p > 0
    zero = torch.zeros((), dtype=torch.float64)
    out = {
        "alpha": torch.minimum(p, q).sum(-1),
        "kl": torch.where(pos, p * (logp - logq), zero).sum(-1),
        "ce": -torch.where(pos, p * logq, zero).sum(-1),
        "entropy": -torch.where(pos, p * logp, zero).sum(-1),
    }
    used = torch.arange(K)[None, :] < case.nd()[:, None]
    return {k: torch.where(used, v, zero) for k, v in out.items()}, p


def _call(case: Case, backend="torch", device="cpu"):
    c = case.to(device)
    out = sk.verify(c.target, c.draft, c.tokens, return_divergence=True, backend=backend, **c.kwargs())
    for f in ("tokens", "num_accepted", "num_emitted", *DIVERGENCE_FIELDS):
        setattr(out, f, getattr(out, f).cpu())
    return out


def check_invariants(case: Case, out) -> None:
    B, K1, V = case.shape
    nd = case.nd()
    temps = case.temps()
    assert out.tokens.dtype == torch.int64 and out.tokens.shape == (B, K1)
    assert out.num_accepted.dtype == torch.int32 and out.num_accepted.shape == (B,)
    assert out.num_emitted.dtype == torch.int32 and out.num_emitted.shape == (B,)
    n_acc, n_emit = out.num_accepted.long(), out.num_emitted.long()
    assert torch.equal(n_emit, n_acc + 1)  # every row is valid by construction
    assert bool(((n_acc >= 0) & (n_acc <= nd)).all())

    logp, logq = _log_probs64(case)
    am = case.target.float().argmax(-1)  # greedy reference: first maximal index of the fp32 logits
    for b in range(B):
        na = int(n_acc[b])
        row = out.tokens[b]
        assert torch.equal(row[:na], case.tokens[b, :na].long())
        assert bool((row[na + 1:] == -1).all())
        y = int(row[na])
        assert 0 <= y < V
        assert logp[b, na, y] > -math.inf, "emitted a token with p = 0"
        if float(temps[b]) == 0:
            assert torch.equal(row[: na + 1], am[b, : na + 1]), "greedy row is not argmax decoding"
            assert na == int(nd[b]) or int(case.tokens[b, na]) != int(am[b, na])
            continue
        if na < int(nd[b]):
            # Correction after a rejection: y lies in the support of max(0, p - q).
            p_y, q_y = math.exp(float(logp[b, na, y])), math.exp(float(logq[b, na, y]))
            assert p_y >= q_y - 2e-6, f"correction {y} has p={p_y} < q={q_y}"
            # A draft with p(x) = 0 is always rejected.
        for j in range(na):
            assert logp[b, j, int(case.tokens[b, j])] > -math.inf, "accepted a draft with p = 0"


def check_divergences(case: Case, out) -> None:
    B, K1, V = case.shape
    K = K1 - 1
    ref, p = _reference_divergences(case)
    used = torch.arange(K)[None, :] < case.nd()[:, None]
    for f in DIVERGENCE_FIELDS:
        v = getattr(out, f)
        assert v.dtype == torch.float32 and v.shape == (B, K), f
        assert bool((v[~used] == 0).all()), f"{f} is not 0 at padded positions"
        assert not bool(v.isnan().any()), f
    a, kl, ce, h = out.alpha.double(), out.kl.double(), out.ce.double(), out.entropy.double()
    assert bool(((a >= -TOL) & (a <= 1 + TOL)).all())
    assert bool((kl >= -TOL).all())
    assert bool((h >= -TOL).all())
    assert bool((ce >= h - 1e-4 - 1e-5 * h.abs()).all())
    torch.testing.assert_close(a, ref["alpha"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h, ref["entropy"], rtol=1e-4, atol=1e-4)
    if case.draft is not None:
        torch.testing.assert_close(kl, ref["kl"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ce, ref["ce"], rtol=1e-4, atol=1e-4)
    else:
        # One-hot q: CE = KL = +inf unless p(x) == 1; documented as "unless p(x) rounds to 1
        # in fp32", so within 1e-5 of 1 either 0 or +inf is accepted.
        p_x64 = ref["alpha"]  # alpha = p(x) for one-hot drafts
        sure_inf = used & (p_x64 < 1 - 1e-5)
        exact_one = used & (p_x64 == 1)
        for v in (kl, ce):
            assert bool((v[sure_inf] == math.inf).all())
            assert bool((v[exact_one] == 0).all())
            either = used & ~sure_inf & ~exact_one
            assert bool(((v[either] == 0) | (v[either] == math.inf)).all())


@settings(deadline=None, max_examples=150)
@given(data=st.data())
def test_invariants_and_divergences_torch(verify_case, data):
    case = data.draw(cases(verify_case))
    out = _call(case)
    check_invariants(case, out)
    check_divergences(case, out)
    again = _call(case)  # deterministic for a fixed seed
    assert torch.equal(out.tokens, again.tokens)


@settings(deadline=None, max_examples=40)
@given(data=st.data())
def test_return_divergence_does_not_change_tokens(verify_case, data):
    case = c = data.draw(cases(verify_case, max_b=6, max_k=4, max_v=40))
    a = sk.verify(c.target, c.draft, c.tokens, backend="torch", **c.kwargs())
    b = _call(case)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.num_accepted, b.num_accepted)


def _compare(case: Case, bk) -> None:
    ref = _call(case, "torch", bk.device)
    out = _call(case, bk.name, bk.device)
    assert torch.equal(out.tokens, ref.tokens)
    assert torch.equal(out.num_accepted, ref.num_accepted)
    assert torch.equal(out.num_emitted, ref.num_emitted)
    for f in DIVERGENCE_FIELDS:
        torch.testing.assert_close(getattr(out, f), getattr(ref, f), rtol=1e-5, atol=2e-5, equal_nan=True,
                                   msg=lambda m, f=f: f"{f}: {m}")
    check_invariants(case, out)


@settings(deadline=None, max_examples=60)
@given(data=st.data())
def test_backends_agree_with_torch(compiled_backend, verify_case, data):
    """Every available backend gives the reference's tokens and (nearly) its divergences."""
    _compare(data.draw(cases(verify_case)), compiled_backend)


@pytest.mark.slow
@settings(deadline=None, max_examples=8)
@given(data=st.data())
def test_triton_interpreter_agrees_with_torch(interpreted_backend, verify_case, data):
    """The same on tiny shapes and few examples for the (slow) Triton interpreter."""
    _compare(data.draw(cases(verify_case, max_b=4, max_k=3, max_v=48)), interpreted_backend)
