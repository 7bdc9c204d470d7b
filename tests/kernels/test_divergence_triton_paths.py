"""The Triton token_divergence kernels beyond test_divergence.py: the split-vocabulary path
(few rows), vocabularies and row starts that are not 16-byte aligned, mixed input dtypes,
unaligned base pointers, and the launch plan / work model the roofline report reads."""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from specfair_kernels import autograd as D  # noqa: E402

try:
    from specfair_kernels.ops import divergence as od

    TRITON_ERR = None
except Exception as exc:  # pragma: no cover - triton missing or broken
    od, TRITON_ERR = None, f"{type(exc).__name__}: {exc}"

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
pytestmark = [pytest.mark.skipif(TRITON_ERR is not None, reason=f"triton unavailable: {TRITON_ERR}")]
slow = [] if HAS_CUDA else [pytest.mark.slow]
KINDS = ("ce", "kl", "tv", "alpha")


def special_rows(N, V, dtype, seed=0):
    """N >= 8 rows: plain, masked prefix, draft -inf where p > 0, identical, NaN, all -inf,
    a +inf target, and maxima that move across tiles."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(N, V, generator=g, dtype=torch.float64) * 2
    t = torch.randn(N, V, generator=g, dtype=torch.float64) * 2
    ramp = torch.linspace(0, 8, V, dtype=torch.float64)
    d[0] += ramp
    t[0] += ramp
    d[1, : V // 3] = t[1, : V // 3] = float("-inf")
    d[2, V // 2] = float("-inf")
    d[3] = t[3]
    d[4, V - 1] = float("nan")
    t[5] = float("-inf")
    t[6, 0] = float("inf")
    t[7] -= ramp
    return d.to(dtype).to(DEV), t.to(dtype).to(DEV)


def run(d, t, kind, T=0.9, grad=True):
    """Triton values and the draft gradient for incoming gradient w (all nonzero)."""
    x = d.clone().requires_grad_(grad)
    vals = D.token_divergence_rows("triton", x, t, kind, T)
    if not grad:
        return vals, None
    w = torch.linspace(0.5, 1.5, d.shape[0], device=d.device)
    vals.backward(w)
    return vals.detach(), x.grad


def torch_path(d, t, kind, T=0.9):
    x = d.clone().requires_grad_(True)
    vals = D.token_divergence_rows("torch", x, t, kind, T)
    w = torch.linspace(0.5, 1.5, d.shape[0], device=d.device)
    vals.backward(w)
    return vals.detach(), x.grad


def close_grads(a, b):
    """Gradients stored in a 16-bit dtype may round one ulp apart."""
    if a.dtype == torch.float32:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, equal_nan=True)
    else:
        scale = b.float().nan_to_num().abs().max().item()
        torch.testing.assert_close(a.float(), b.float(), rtol=1.6e-2, atol=1.6e-2 * scale, equal_nan=True)


@pytest.fixture
def split(monkeypatch):
    """Tiny tiles, and enough pretend SMs that a few rows take the split path."""
    monkeypatch.setattr(od, "MAX_BLOCK", 64)
    monkeypatch.setattr(od, "MIN_SEG_TILES", 1)
    monkeypatch.setattr(od, "INTERPRETER_SMS", 64)
    if HAS_CUDA:
        monkeypatch.setattr(od, "_num_sms", lambda device: 64)


@pytest.mark.parametrize("kind", [pytest.param(k, marks=slow) for k in KINDS])
@pytest.mark.parametrize("dtype,V", [(torch.float32, 300), (torch.bfloat16, 300), (torch.float32, 700)],
                         ids=["fp32-V300", "bf16-V300", "fp32-V700"])
def test_split_path_equals_row_path(kind, dtype, V, split, monkeypatch):
    """Several segments per row (the last one taking the head, the tail and the remainder)
    give the row kernel's values, special values and gradients."""
    N = 8
    launches = od._launches(N, V, dtype.itemsize, dtype.itemsize, kind, True, 64)
    assert launches[0]["kernel"] == "_split_stats_kernel"
    assert launches[0]["constexprs"]["NSEG"] >= 4
    d, t = special_rows(N, V, dtype, seed=V)
    v_split, g_split = run(d, t, kind)
    v_split_nograd, _ = run(d, t, kind, grad=False)
    monkeypatch.setattr(od, "INTERPRETER_SMS", 1)  # now one program per row
    if HAS_CUDA:
        monkeypatch.setattr(od, "_num_sms", lambda device: 1)
    v_row, g_row = run(d, t, kind)
    torch.testing.assert_close(v_split, v_row, rtol=1e-6, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(v_split_nograd, v_split, rtol=0, atol=0, equal_nan=True)
    close_grads(g_split, g_row)
    assert v_row[[4, 5, 6]].isnan().all() and g_row[[4, 5, 6]].isnan().all()
    if kind in ("ce", "kl"):
        assert v_row[2] == float("inf") and g_row[2].isfinite().all()
    else:
        assert (g_row[3] == 0).all()  # identical rows: zero subgradient
    v_ref, g_ref = torch_path(d, t, kind)
    torch.testing.assert_close(v_row, v_ref, rtol=2e-5, atol=2e-5, equal_nan=True)
    close_grads(g_row, g_ref)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_unaligned_vocabularies(dtype):
    """V not a multiple of the 16-byte vector: every row start offset k0 (head tile), tails
    longer than a tile, and vocabularies smaller than one vector."""
    for V in (1, 3, 7, 9, 23, 37, 45):
        d, t = special_rows(9, V, dtype, seed=V)
        d[3] = t[3]
        for kind in ("kl", "alpha"):
            v, g = run(d, t, kind)
            v_ref, g_ref = torch_path(d, t, kind)
            torch.testing.assert_close(v, v_ref, rtol=2e-5, atol=2e-5, equal_nan=True)
            close_grads(g, g_ref)


@pytest.mark.slow
def test_mixed_dtypes_and_unaligned_pointers():
    """bf16 draft with an fp32 target (the vector is sized by the narrower dtype), and a draft
    whose storage starts 2 bytes past a 16-byte boundary (the kernel then drops its
    alignment hint) give the same results as aligned copies."""
    V = 48
    d, t = special_rows(8, V, torch.bfloat16, seed=1)
    for kind in KINDS:
        v, g = run(d, t.float(), kind)
        v_ref, g_ref = torch_path(d, t.float(), kind)
        torch.testing.assert_close(v, v_ref, rtol=2e-5, atol=2e-5, equal_nan=True)
        close_grads(g, g_ref)
    buf = torch.empty(d.numel() + 1, dtype=d.dtype, device=d.device)
    shifted = buf[1:].view(d.shape)
    shifted.copy_(d)
    assert shifted.data_ptr() % 16 != 0
    for kind in ("ce", "tv"):
        with torch.no_grad():
            a = D.token_divergence_rows("triton", shifted, t, kind, 1.0)
            b = D.token_divergence_rows("triton", d, t, kind, 1.0)
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


# --- launch plan and work model (no kernels run) ------------------------------------------

def test_plan_covers_each_row_once():
    """Full tiles, split into NSEG segments (the last takes the remainder), plus the edge
    tiles cover every row position exactly once for every row start offset."""
    for V, eb, block in ((128256, 2, None), (50257, 2, None), (300, 2, 64), (37, 4, 16), (5, 2, 16)):
        for N in (1, 3, 16, 200):
            p = od._plan(N, V, eb, eb, 132, block)
            B, ept, nf, nseg, seg = p["BLOCK"], p["EPT"], p["NF"], p["NSEG"], p["SEG"]
            assert ept == 16 // eb and B % ept == 0
            assert nseg == 1 or (nseg & (nseg - 1) == 0 and seg >= od.MIN_SEG_TILES)
            last = od._last_tiles(V, B, ept, seg, nseg)
            assert last >= seg >= 0 and (nseg - 1) * seg + last == nf
            for k0 in sorted({0} if V % ept == 0 else set(range(ept))):
                hit = torch.zeros(V, dtype=torch.int64)
                hit[k0:k0 + nf * B] += 1  # full tiles, all in bounds
                assert nf == 0 or k0 + nf * B <= V
                for i in range(od._first_edge(V, ept), od._end_edge(V, B, ept)):
                    if i == 0:
                        hit[:min(k0, V)] += 1
                    else:
                        lo = k0 + (nf + i - 1) * B
                        hit[min(lo, V):min(lo + B, V)] += 1
                assert (hit == 1).all(), (V, N, k0)


def test_work_model():
    N, V = 8192, 128256
    for kind in KINDS:
        for need_grad in (True, False):
            row, *backward = od.work_model(N, V, 2, kind, need_grad)
            if need_grad:  # the backward scales the saved gradient: one read, one write
                (bw,) = backward
                assert bw["kernel"] == "_scale_rows_kernel" and bw["dram_bytes"] == 2 * N * V * 2 + 4 * N
            else:
                assert backward == []
            assert row["kernel"] == "_divergence_rows_kernel" and row["programs"] == N
            assert row["constexprs"]["NEED_GRAD"] == need_grad and row["constexprs"]["V"] == V
            reads = 1 + (need_grad or kind in ("tv", "alpha")) + (need_grad and kind in ("tv", "alpha"))
            assert len(row["loops"]) == reads
            full = od._full_tiles(V, row["constexprs"]["BLOCK"], 8) * row["constexprs"]["BLOCK"]
            assert all(lp["elements"] == 2 * N * full for lp in row["loops"])
            moved = reads * 2 * N * V * 2 + (N * V * 2 if need_grad else 0) + 4 * N
            assert row["dram_bytes"] + row["l2_bytes"] == moved
            assert 0 <= row["l2_bytes"] <= (reads - 1) * 2 * N * V * 2
    # A few rows: the vocabulary is split; every launch streams the row once at most.
    launches = od.work_model(4, V, 2, "alpha", True)[:-1]   # the forward launches
    assert [x["kernel"] for x in launches] == ["_split_stats_kernel", "_split_sweep_kernel", "_split_finish_kernel"]
    for x in launches:
        assert x["programs"] == 4 * x["constexprs"]["NSEG"]
        assert sum(lp["elements"] for lp in x["loops"]) == 2 * 4 * od._full_tiles(V, 4096, 8) * 4096
    assert launches[1]["l2_bytes"] >= 2 * 4 * V * 2  # 4 rows fit in L2: the re-read hits
    assert [len(x["loops"]) for x in od.work_model(4, V, 2, "ce", False)] == [2, 0]


# --- backward: rows scaled in place ----------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_scale_rows_is_the_backward(dtype, monkeypatch):
    """scale_rows_ gives grad.mul_(go).masked_fill_(go == 0, 0) (the in-place backward of
    specfair_kernels.autograd): rows scaled by 0 are exactly 0 even over NaN, rows scaled by
    1 untouched, NaN scales NaN.  Bit for bit, except that the interpreter truncates fp32 to
    bf16 where the GPU (and torch) round to nearest."""
    monkeypatch.setattr(od, "MAX_BLOCK", 64)
    for V in (1, 37, 300):
        g = (torch.randn(6, V, generator=torch.Generator().manual_seed(V)) * 3).to(dtype).to(DEV)
        g[2, 0] = g[3] = float("nan")
        go = torch.tensor([0.37, 1.0, 0.0, 0.0, -3.0, float("nan")], device=DEV)
        ref = g.clone().mul_(go[:, None]).masked_fill_(go[:, None] == 0, 0)
        out = od.scale_rows_(g.clone(), go)
        assert torch.equal(out.isnan(), ref.isnan())
        assert (out[2:4] == 0).all() and torch.equal(out[1], g[1])
        if dtype == torch.bfloat16 and not HAS_CUDA:
            torch.testing.assert_close(out, ref, rtol=2**-7, atol=0, equal_nan=True)
        else:
            assert torch.equal(out.nan_to_num(), ref.nan_to_num())
