"""The C++ CPU backend (`specfair_kernels._C`): csrc/verify.cpp against the torch reference,
and the building blocks of csrc/divergence.cpp (its values and gradients are tested in
test_divergence.py with the other backends).

Tokens, num_accepted and num_emitted must be *equal* to ``backend="torch"`` (the random
words are bit-identical; fp32 lse / log may differ in the last bit, which flips a decision
only on an exact near-tie, and the seeds here are fixed); divergences must agree to fp32
precision.  Skipped when the extension is not built.
"""
from __future__ import annotations

import random

import pytest
import torch

import specfair_kernels as sk
from specfair_kernels import backends, reference, rng
from specfair_kernels.stats import DIVERGENCE_FIELDS

_C = backends.cpp_extension()
if _C is None:
    pytest.skip(f"C++ extension not built: {backends.unavailable_reason('cpp', torch.device('cpu'))}",
                allow_module_level=True)

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
NEG_INF = float("-inf")
# The reference's p = exp(a - lse) inherits the fp32 rounding of lse (half an ulp of
# max|a|), amplified by |log q| in CE/KL: with logits of magnitude ~1e3 the reference
# itself is off by ~3e-5 relative (the C++ backend, p = exp(a - max) / S, is closer to
# float64; see test_divergence_accuracy_vs_float64).
DIV_TOL = 1e-4


def run(case, backend, **kw):
    return sk.verify(**case, return_divergence=True, backend=backend, **kw)


def assert_same(case, msg=""):
    ref = run(case, "torch")
    out = run(case, "cpp")
    assert torch.equal(out.tokens, ref.tokens), f"{msg}\ncpp {out.tokens}\nref {ref.tokens}"
    assert out.num_accepted.dtype == torch.int32 and out.num_emitted.dtype == torch.int32
    assert torch.equal(out.num_accepted, ref.num_accepted), msg
    assert torch.equal(out.num_emitted, ref.num_emitted), msg
    for k in DIVERGENCE_FIELDS:
        a, b = getattr(out, k), getattr(ref, k)
        assert a.dtype == torch.float32 and a.shape == b.shape, (k, a.dtype, a.shape, b.shape)
        torch.testing.assert_close(a, b, rtol=DIV_TOL, atol=DIV_TOL, equal_nan=True,
                                   msg=lambda m, k=k: f"{k} {msg}: {m}")
    return out, ref


# --- token and divergence equality --------------------------------------------------------

@pytest.mark.parametrize("block", range(6))
def test_matches_reference_random(block, verify_case):
    g = torch.Generator().manual_seed(1000 + block)
    rnd = random.Random(block)
    for i in range(30):
        K = rnd.choice((0, 1, 4, 7))
        V = rnd.choice((1, 2, 5, 64, 1000))
        case = verify_case(
            g, B=rnd.randint(1, 16), K=K, V=V,
            tdtype=rnd.choice(DTYPES), ddtype=rnd.choice(DTYPES),
            draft=rnd.choice(("logits", "logits", "onehot", "equal")),
            scale=rnd.choice((0.5, 3.0, 20.0)), mask_frac=0.3 if rnd.random() < 0.3 else 0.0,
            tokens="likely" if rnd.random() < 0.6 else "uniform")
        assert_same(case, f"block {block} case {i} K={K} V={V}")


@pytest.mark.parametrize("tdtype", DTYPES)
@pytest.mark.parametrize("ddtype", DTYPES)
def test_dtype_pairs(tdtype, ddtype, verify_case):
    g = torch.Generator().manual_seed(7)
    for draft in ("logits", "onehot", "equal"):
        case = verify_case(g, B=12, K=4, V=300, tdtype=tdtype, ddtype=ddtype, draft=draft, tokens="likely")
        assert_same(case, f"{tdtype} {ddtype} {draft}")


def test_divergence_accuracy_vs_float64(verify_case):
    g = torch.Generator().manual_seed(13)
    for draft in ("logits", "onehot"):
        case = verify_case(g, B=12, K=4, V=1000, draft=draft, scale=3.0, mask_frac=0.3 if draft == "onehot" else 0.0)
        out = run(case, "cpp")
        temp = case["temperature"]
        tau = torch.where(temp == 0, torch.ones_like(temp), temp)[:, None, None]
        lp = torch.log_softmax((case["target_logits"][:, :4].float() / tau).double(), -1)
        p = lp.exp()
        x = case["draft_tokens"].clamp(min=0)
        if draft == "logits":
            lq = torch.log_softmax((case["draft_logits"].float() / tau).double(), -1)
            want = {"alpha": torch.minimum(p, lq.exp()).sum(-1), "kl": (p * (lp - lq)).sum(-1),
                    "ce": -(p * lq).sum(-1)}
        else:
            want = {"alpha": p.gather(-1, x[..., None])[..., 0]}
        want["entropy"] = -torch.where(p > 0, p * lp, 0.0).sum(-1)
        used = torch.arange(4)[None, :] < case["num_draft"][:, None]
        for k, v in want.items():
            got = getattr(out, k)
            torch.testing.assert_close(got[used].double(), v[used], rtol=1e-5, atol=1e-5,
                                       msg=lambda m, k=k: f"{k}: {m}")
            assert (got[~used] == 0).all()


def test_full_acceptance_when_draft_equals_target(verify_case):
    g = torch.Generator().manual_seed(3)
    case = verify_case(g, B=16, K=7, V=1000, draft="equal", tokens="likely", temps=(0.5, 1.0, 2.0))
    out, _ = assert_same(case)
    assert torch.equal(out.num_accepted, case["num_draft"].to(torch.int32))
    used = torch.arange(7)[None, :] < case["num_draft"][:, None]
    assert (out.kl[used] == 0).all() and (out.kl[~used] == 0).all()


def test_large_vocab(verify_case):
    g = torch.Generator().manual_seed(11)
    for draft in ("logits", "onehot"):
        case = verify_case(g, B=4, K=3, V=32000, draft=draft, scale=2.0, tokens="likely")
        assert_same(case, draft)


def test_wide_logits_and_masks(verify_case):
    """Sharp distributions and heavy -inf masking: zero race weights and empty groups."""
    g = torch.Generator().manual_seed(5)
    for scale in (0.01, 30.0, 300.0):
        case = verify_case(g, B=12, K=4, V=1000, scale=scale, mask_frac=0.3, tokens="likely", temps=(0.5, 1.0, 2.0))
        assert_same(case, f"scale {scale}")
    # Almost everything masked: a handful of live entries per distribution.
    t = torch.full((6, 3, 500), NEG_INF)
    d = torch.full((6, 2, 500), NEG_INF)
    t[..., :3] = torch.randn(6, 3, 3, generator=g)
    d[..., 1:4] = torch.randn(6, 2, 3, generator=g)
    for dl in (d, None):
        case = dict(target_logits=t, draft_logits=dl, draft_tokens=torch.ones(6, 2, dtype=torch.int64),
                    num_draft=torch.tensor([0, 1, 2, 2, 1, 2]), temperature=1.0,
                    seed=torch.arange(6) + 9, step=3)
        assert_same(case)


def test_residual_without_mass_falls_back_to_bonus():
    """p(x) = 0 with p == q elsewhere to fp32: rejection, but max(0, p - q) is 0 everywhere."""
    g = torch.Generator().manual_seed(2)
    B, K, V = 8, 2, 100
    t = torch.randn(B, K + 1, V, generator=g)
    x = torch.full((B, K), 5)
    t[:, :K, 5] = -40.0  # q(x) ~ 1e-18: p and q round identically elsewhere
    d = t[:, :K].clone()
    t[:, :K, 5] = NEG_INF
    case = dict(target_logits=t, draft_logits=d, draft_tokens=x, num_draft=K, temperature=1.0,
                seed=torch.arange(B), step=0)
    out, _ = assert_same(case)
    assert (out.num_accepted == 0).all()
    # The emitted token is the race's over the bonus weights p at position 0.
    p = torch.softmax(t[:, 0], -1)
    zeros = torch.zeros(B, dtype=torch.int64)
    bonus = reference.race(p, torch.arange(B), zeros, zeros)
    assert torch.equal(out.tokens[:, 0], bonus)


def test_invalid_rows(verify_case):
    g = torch.Generator().manual_seed(4)
    B, K, V = 10, 4, 50
    for draft in ("logits", "onehot"):
        case = verify_case(g, B=B, K=K, V=V, draft=draft, tokens="likely")
        nd = torch.tensor([4, 4, 2, 2, 0, 3, 4, 1, 2, 0])
        case["num_draft"] = nd
        case["draft_tokens"] = torch.where(torch.arange(K)[None] < nd[:, None], case["draft_tokens"].clamp(min=0), -1)
        t = case["target_logits"].clone()
        t[0, 1, 7] = float("nan")        # used target position -> invalid
        t[1, 4, 3] = float("inf")        # used bonus position -> invalid
        t[2, 3, :] = float("nan")        # unused (j > num_draft = 2) -> ignored
        t[3, 2, 0] = float("nan")        # used bonus position (j = num_draft) -> invalid
        t[4, 0, :] = NEG_INF             # all -inf at the only used position -> invalid
        t[5, 4, :] = float("nan")        # unused (num_draft = 3) -> ignored
        t[9, 1:, :] = float("inf")       # unused -> ignored
        case["target_logits"] = t
        if case["draft_logits"] is not None:
            d = case["draft_logits"].clone()
            d[6, 3, 1] = float("nan")    # used draft position -> invalid
            d[7, 1:, :] = float("nan")   # unused draft positions -> ignored
            d[8, 2, :] = float("inf")    # unused (num_draft = 2) -> ignored
            d[9, :, :] = float("nan")    # num_draft = 0: no draft position used -> ignored
            case["draft_logits"] = d
        out, _ = assert_same(case, draft)
        invalid = {0, 1, 3, 4} | ({6} if draft == "logits" else set())
        for b in range(B):
            if b in invalid:
                assert out.num_emitted[b] == 0 and (out.tokens[b] == -1).all()
                assert out.alpha[b, : nd[b]].isnan().all() and (out.alpha[b, nd[b]:] == 0).all()
            else:
                assert out.num_emitted[b] == out.num_accepted[b] + 1
                assert torch.isfinite(out.alpha[b]).all() and torch.isfinite(out.entropy[b]).all()


def test_tempered_overflow_is_invalid():
    """a = logit / tau is checked, not the raw logit: a finite logit can overflow to +inf."""
    t = torch.zeros(3, 2, 8)
    t[:, 0, 2] = 3e38
    t[2, 0, 2] = -3e38  # overflows to -inf: an ordinary masked entry
    case = dict(target_logits=t, draft_logits=torch.zeros(3, 1, 8), draft_tokens=torch.zeros(3, 1, dtype=torch.int64),
                num_draft=1, temperature=torch.tensor([0.5, 1.0, 0.5]), seed=1, step=0)
    out, _ = assert_same(case)
    assert out.num_emitted[0] == 0 and (out.num_emitted[1:] > 0).all()


def test_greedy_rows(verify_case):
    g = torch.Generator().manual_seed(6)
    case = verify_case(g, B=16, K=7, V=64, temps=(0.0,), tokens="likely")
    case["target_logits"] = case["target_logits"].round()  # many ties: first maximal index
    out, _ = assert_same(case)
    am = case["target_logits"].float().argmax(-1)
    for b in range(16):
        n = int(out.num_accepted[b])
        assert out.tokens[b, n] == am[b, n]


def test_k0_and_v1(verify_case):
    g = torch.Generator().manual_seed(8)
    for V in (1, 2, 7):
        for draft in ("logits", "onehot"):
            case = verify_case(g, B=5, K=0, V=V, draft=draft)
            out, _ = assert_same(case)
            assert out.alpha.shape == (5, 0)
    case = verify_case(g, B=6, K=3, V=1, tokens="likely")
    out, _ = assert_same(case)
    assert (out.tokens[out.tokens >= 0] == 0).all()


def test_without_divergence_and_direct_call(verify_case):
    g = torch.Generator().manual_seed(9)
    case = verify_case(g, B=9, K=4, V=200, tokens="likely")
    a = sk.verify(**case, backend="cpp")
    b = sk.verify(**case, backend="torch")
    assert a.alpha is None and torch.equal(a.tokens, b.tokens) and torch.equal(a.num_accepted, b.num_accepted)
    args = (case["target_logits"], case["draft_logits"], case["draft_tokens"].to(torch.int64),
            case["num_draft"].to(torch.int64), case["temperature"], case["seed"], case["step"])
    tokens, n_acc, n_emit, div = _C.verify(*args, False)
    assert div is None and tokens.dtype == torch.int64 and n_acc.dtype == torch.int32
    ref = reference.verify_ref(*args, True)
    tokens, n_acc, n_emit, div = _C.verify(*args, True)
    assert isinstance(div, tuple) and len(div) == 4
    assert torch.equal(tokens, ref[0]) and torch.equal(n_emit, ref[2])


def test_batch_invariance(verify_case):
    """A seeded row gives the same tokens in any batch slot and batch size."""
    g = torch.Generator().manual_seed(10)
    case = verify_case(g, B=8, K=4, V=500, tokens="likely")
    full = sk.verify(**case, backend="cpp")
    perm = torch.randperm(8, generator=g)
    sub = {k: (v[perm[:5]] if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
    part = sk.verify(**sub, backend="cpp")
    assert torch.equal(part.tokens, full.tokens[perm[:5]])


def test_thread_count_does_not_change_results(verify_case):
    g = torch.Generator().manual_seed(12)
    case = verify_case(g, B=16, K=4, V=3000, tokens="likely")
    old = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(run(case, "cpp"))
    finally:
        torch.set_num_threads(old)
    for o in outs[1:]:
        assert torch.equal(o.tokens, outs[0].tokens) and torch.equal(o.num_accepted, outs[0].num_accepted)
        for k in DIVERGENCE_FIELDS:
            assert torch.equal(getattr(o, k), getattr(outs[0], k))


# --- random numbers ------------------------------------------------------------------------

def test_philox_matches_rng():
    r = random.Random(0)
    for seed, counter in [(0, (0, 0, 0, 0)), (2**64 - 1 - 2**63, (2**32 - 1,) * 4)] + [
            (r.randint(-2**63, 2**63 - 1), tuple(r.randint(0, 2**40) for _ in range(4))) for _ in range(300)]:
        want = rng.philox4(seed & (2**64 - 1), tuple(c & rng.MASK32 for c in counter))[0]
        assert _C.philox(seed, *counter) == want == int(rng.philox(torch.tensor(seed), *counter))


def test_uniform_and_exponential_conversions():
    g = torch.Generator().manual_seed(0)
    edge = torch.tensor([0, 1, 255, 256, 2**22 - 1, 2**22, 2**24, 2**31, 2**32 - 257, 2**32 - 256, 2**32 - 2,
                         2**32 - 1])
    w = torch.cat([edge, torch.randint(0, 2**32, (200_000,), generator=g, dtype=torch.int64)])
    assert torch.equal(_C.uniform_accept(w), rng.uniform_accept(w))
    e_c, e_r = _C.exponential(w), rng.exponential(w)
    assert (e_c > 0).all() and torch.isfinite(e_c).all()
    # The series branch (v < 2^-10) is plain fp32 arithmetic: bit-identical.  The log
    # branch differs at most by torch's and libm's last-bit log rounding.
    v = w.to(torch.float32) * 2**-32 + 2**-33
    series = v < 2**-10
    assert series.sum() > 50
    assert torch.equal(e_c[series], e_r[series])
    ulps = (e_c.view(torch.int32) - e_r.view(torch.int32)).abs()
    assert ulps.max() <= 1


def test_half_and_bfloat16_conversions_exact():
    """The backend's branch-free fp16/bf16 -> fp32 conversion, on every bit pattern."""
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    for dtype in (torch.float16, torch.bfloat16):
        x = bits.view(dtype)
        got, want = _C.to_float32(x), x.float()
        nan = want.isnan()
        assert torch.equal(got.isnan(), nan)
        assert torch.equal(got[~nan].view(torch.int32), want[~nan].view(torch.int32))


# --- csrc/divergence.cpp's building blocks ---------------------------------------------------

_needs_div_ops = pytest.mark.skipif(backends.cpp_op("token_divergence") is None,
                                    reason="_C was built without csrc/divergence.cpp")


def _float32_edge_cases(n_random=1_000_000):
    """Every fp32 bit-pattern class that rounding to bf16 / fp16 treats specially, plus random bits."""
    g = torch.Generator().manual_seed(0)
    rand = torch.randint(-2**31, 2**31, (n_random,), generator=g, dtype=torch.int64).to(torch.int32)
    # Exactly half an ulp (ties to even), over fp16's exponent range and its subnormals ...
    exp = torch.randint(96, 144, (200_000,), generator=g, dtype=torch.int32)
    ties = exp << 23 | torch.randint(0, 2**10, (200_000,), generator=g, dtype=torch.int32) << 13 | (1 << 12)
    # ... and bf16's.
    exp = torch.randint(0, 255, (200_000,), generator=g, dtype=torch.int32)
    bf_ties = exp << 23 | torch.randint(0, 2**7, (200_000,), generator=g, dtype=torch.int32) << 16 | (1 << 15)
    x = torch.cat([rand, ties, -ties, bf_ties, -bf_ties]).view(torch.float32)
    special = torch.tensor([0.0, -0.0, 65504.0, 65519.99, 65520.0, 65536.0, 2**-14, 2**-24, 2**-25, 2**-25 * 1.5,
                            3e38, float("inf"), -float("inf"), float("nan"), 1e-45, 5.96e-8])
    return torch.cat([x, special, -special])


@_needs_div_ops
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_gradient_rounding_equals_torch(dtype):
    """The backend writes bf16 / fp16 gradients with the rounding of x.to(dtype)."""
    x = _float32_edge_cases()
    got = torch.ops.specfair_kernels.cast_from_float32(x, dtype)
    want = x.to(dtype)
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan)
    assert torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16))


@_needs_div_ops
def test_exp_accuracy():
    x = torch.cat([-torch.rand(2_000_000, generator=torch.Generator().manual_seed(1)) * 90,
                   torch.tensor([0.0, -0.0, -1e-30, -86.99, -87.0, -87.01, -100.0, -1e30, float("-inf")])])
    got = torch.ops.specfair_kernels.exp_nonpositive(x).double()
    want = torch.exp(x.double())
    live = x >= -87.0
    assert bool((got[~live] == 0).all())  # flushed below e^-87: never subnormal
    rel = ((got - want).abs() / want)[live]
    assert rel.max() < 2**-22, float(rel.max())  # within 2 ulps
    assert got[-9] == 1.0 and got[-8] == 1.0


@_needs_div_ops
@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_rows_equals_mul_and_masked_fill(dtype):
    """Backward of backend='cpp' scales the saved gradient with one in-place op; it equals
    grad.mul_(scale[:, None]) then zeroing the rows whose scale is 0, NaN rows included."""
    g = torch.Generator().manual_seed(2)
    grad = (torch.randn(7, 300, generator=g) * 1e-3).to(dtype)
    grad[2] = float("nan")
    grad[4, 5] = float("inf")
    scale = torch.tensor([0.5, 1.0, 0.0, 3.0, 0.0, -2.0, float("nan")])
    want = grad.clone().mul_(scale[:, None]).masked_fill_(scale[:, None] == 0, 0)
    got = grad.clone()
    torch.ops.specfair_kernels.scale_rows_(got, scale)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want))
    assert torch.equal(got[2], torch.zeros_like(got[2])) and (got[4] == 0).all()


@_needs_div_ops
def test_cpu_isa_is_reported():
    assert torch.ops.specfair_kernels.cpu_isa() in ("baseline", "avx2", "avx512")
