"""The Triton token_divergence kernels on a real GPU at real vocabulary sizes: one program per
row, the split path, an unaligned vocabulary, the tile-size knob, and identical rows (whose
alpha/tv subgradient must be exactly 0 although two normalisers computed apart can differ
in the last bit).  Skipped without CUDA."""
import pytest
import torch

triton = pytest.importorskip("triton")
from specfair_kernels.ops import divergence as od  # noqa: E402

pytestmark = pytest.mark.cuda
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
KINDS = ("ce", "kl", "tv", "alpha")
VAL_TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-5}
GRAD_RTOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2}


def _logits(N, V, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    t = torch.randn(N, V, device="cuda", generator=g) * 3
    d = t + torch.randn(N, V, device="cuda", generator=g)
    d[0, : V // 2] = t[0, : V // 2] = float("-inf")  # masked prefix
    d[1, 7] = float("-inf")                           # p > 0 = q: CE = KL = +inf
    d[2] = t[2]                                       # identical rows
    return d.to(dtype), t.to(dtype)


def _reference(d, t, kind, T):
    """float64 values and local gradients (the formulas of specfair_kernels.autograd)."""
    logq = torch.log_softmax(d.double() / T, -1)
    logp = torch.log_softmax(t.double() / T, -1)
    p, q = logp.exp(), logq.exp()
    zero = torch.zeros((), dtype=torch.float64, device=d.device)
    if kind in ("ce", "kl"):
        inner = logq if kind == "ce" else logq - logp
        val = -torch.where(p > 0, p * inner, zero).sum(-1)
        return torch.where(((p > 0) & (q == 0)).any(-1), float("inf"), val), (q - p) / T
    qlt = torch.where(q < p, q, zero)
    g = (qlt - q * qlt.sum(-1, keepdim=True)) / T
    if kind == "alpha":
        return torch.minimum(p, q).sum(-1), g
    return 0.5 * (p - q).abs().sum(-1), -g


@cuda
@pytest.mark.parametrize("N,V,dtype", [(300, 128256, torch.bfloat16), (4, 128256, torch.bfloat16),
                                       (64, 50257, torch.bfloat16), (200, 32000, torch.float32)],
                         ids=["rows-bf16", "split-bf16", "split-unaligned-bf16", "rows-fp32"])
@pytest.mark.parametrize("kind", KINDS)
def test_triton_matches_float64_on_gpu(kind, N, V, dtype):
    d, t = _logits(N, V, dtype)
    T = 0.8
    vals, grad = od.launch(d, t, kind, T, True)
    ref, gref = _reference(d, t, kind, T)
    tol = VAL_TOL[dtype]
    torch.testing.assert_close(vals.double(), ref, rtol=tol, atol=tol)
    assert grad.dtype == dtype and grad.shape == d.shape
    gatol = GRAD_RTOL[dtype] * gref.abs().max().item() if dtype != torch.float32 else 1e-7
    torch.testing.assert_close(grad.double(), gref, rtol=GRAD_RTOL[dtype], atol=gatol)
    if kind in ("tv", "alpha"):
        assert (grad[2] == 0).all()
    no_grad_vals, none = od.launch(d, t, kind, T, False)
    assert none is None
    torch.testing.assert_close(no_grad_vals, vals, rtol=0, atol=0)


@cuda
@pytest.mark.parametrize("block", [2048, 8192])
def test_tile_size_knob_on_gpu(block):
    """Other tile sizes (8 and 32 warps) give the default tile's results."""
    d, t = _logits(200, 128256, torch.bfloat16, seed=1)
    for kind in ("kl", "alpha"):
        v0, g0 = od.launch(d, t, kind, 1.0, True)
        v1, g1 = od.launch(d, t, kind, 1.0, True, block=block)
        torch.testing.assert_close(v1, v0, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(g1.float(), g0.float(), rtol=1.6e-2, atol=1e-6)


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_neg_log_alpha_through_the_api_on_gpu(dtype):
    """neg_log_alpha (the Triton alpha pass, then -log alpha and the row-scaled gradient) against
    float64: values, and the gradient of the summed loss through autograd."""
    import specfair_kernels as sk

    d, t = _logits(64, 50257, dtype, seed=2)
    d = d.clone().requires_grad_(True)
    vals = sk.token_divergence(d, t, kind="neg_log_alpha", temperature=0.8, reduction="none", backend="triton")
    vals.sum().backward()
    alpha, galpha = _reference(d.detach(), t, "alpha", 0.8)
    tol = VAL_TOL[dtype]
    torch.testing.assert_close(vals.double(), -alpha.log(), rtol=tol, atol=tol)
    gref = -galpha / alpha[:, None]
    gatol = GRAD_RTOL[dtype] * gref.abs().max().item() if dtype != torch.float32 else 1e-7
    torch.testing.assert_close(d.grad.double(), gref, rtol=GRAD_RTOL[dtype], atol=gatol)
    assert (d.grad[2] == 0).all()      # identical rows: alpha = 1, subgradient exactly 0
