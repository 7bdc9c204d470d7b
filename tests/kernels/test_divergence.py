"""token_divergence / autograd.token_divergence_rows: values, gradients, reductions,
special values, memory bound, validation; the C++ kernel (csrc/divergence.cpp) and the
Triton kernel (interpreter on the CPU) against the float64 reference and the torch path."""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    # Before anything imports triton (tests/conftest.py does the same; harmless twice).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import specfair_kernels as sk  # noqa: E402
from specfair_kernels import autograd as D  # noqa: E402
from specfair_kernels import backends, reference  # noqa: E402

try:
    import triton  # noqa: F401

    from specfair_kernels.ops import divergence as ops_div

    TRITON_ERR = None
except Exception as exc:  # pragma: no cover - triton missing or broken
    ops_div, TRITON_ERR = None, f"{type(exc).__name__}: {exc}"

HAS_CUDA = torch.cuda.is_available()
TRITON_DEVICE = "cuda" if HAS_CUDA else "cpu"
_skip_no_triton = pytest.mark.skipif(TRITON_ERR is not None, reason=f"triton unavailable: {TRITON_ERR}")
# The interpreter is slow: its tests are also marked `slow` (deselect with -m "not slow").
needs_triton = [_skip_no_triton] + ([] if HAS_CUDA else [pytest.mark.slow])
CPP_ERR = backends.unavailable_reason("cpp", torch.device("cpu"), "token_divergence")
needs_cpp = [pytest.mark.skipif(CPP_ERR is not None, reason=f"C++ backend unavailable: {CPP_ERR}")]
ROW_BACKENDS = ["torch", pytest.param("cpp", marks=needs_cpp), pytest.param("triton", marks=needs_triton)]
KINDS = ("ce", "kl", "tv", "alpha", "neg_log_alpha")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Values are computed in fp32 from the (rounded) inputs for every dtype; the gradient is
# stored in the input dtype, hence its looser tolerance.
VAL_TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-5, 2e-5), torch.float16: (2e-5, 2e-5)}
GRAD_RTOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
BLOCK = 64  # Triton tile in these tests: V=300 -> 5 tiles, the last one partial


@pytest.fixture
def small_tiles(monkeypatch):
    """Make the Triton launcher tile V=300 with BLOCK=64 (several loop iterations)."""
    if ops_div is not None:
        monkeypatch.setattr(ops_div, "MAX_BLOCK", BLOCK)


def dev_for(backend):
    return TRITON_DEVICE if backend == "triton" else "cpu"


# --- float64 reference ------------------------------------------------------------------

def ref_values(d, t, kind, T):
    """Direct float64 formulas from (log_)softmax of the same, possibly rounded, inputs."""
    logq = torch.log_softmax(d.double() / T, -1)
    logp = torch.log_softmax(t.double() / T, -1)
    p, q = logp.exp(), logq.exp()
    zero = torch.zeros((), dtype=torch.float64, device=d.device)
    if kind == "ce":
        return -torch.where(p > 0, p * logq, zero).sum(-1)
    if kind == "kl":
        return torch.where(p > 0, p * (logp - logq), zero).sum(-1)
    if kind == "tv":
        return 0.5 * (p - q).abs().sum(-1)
    if kind == "neg_log_alpha":
        return -torch.log(torch.minimum(p, q).sum(-1))
    return torch.minimum(p, q).sum(-1)


def ref_grad(d, t, kind, T):
    """d value_n / d draft_n in float64 (analytic; gradcheck checks the formulas)."""
    q = torch.softmax(d.double() / T, -1)
    p = torch.softmax(t.double() / T, -1)
    if kind in ("ce", "kl"):
        return (q - p) / T
    qlt = torch.where(q < p, q, torch.zeros_like(q))
    g = (qlt - q * qlt.sum(-1, keepdim=True)) / T
    if kind == "neg_log_alpha":
        return -g / torch.minimum(p, q).sum(-1, keepdim=True)
    return g if kind == "alpha" else -g


def make_logits(N=6, V=300, dtype=torch.float32, device="cpu", seed=0, special=True):
    """Draft/target logits with running maxima that move across tiles and -inf entries."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(N, V, generator=g, dtype=torch.float64) * 2
    t = torch.randn(N, V, generator=g, dtype=torch.float64) * 2
    ramp = torch.linspace(0, 8, V, dtype=torch.float64)
    d[0] += ramp          # both maxima move in every tile
    t[0] += ramp
    t[1] -= ramp          # target max in the first tile, draft's in the last
    d[1] += ramp
    if special and N >= 6:
        d[2, :70] = float("-inf")   # first tile of the draft all -inf ...
        t[2, :70] = float("-inf")   # ... and of the target: masked prefix
        d[3, 100:130] = float("-inf")  # draft -inf where p > 0: CE = KL = +inf
        t[4, 5:300:7] = float("-inf")  # scattered target zeros (p = 0)
        d[5] = t[5]                     # identical rows
    return d.to(dtype).to(device), t.to(dtype).to(device)


def run_rows(backend, d, t, kind, T, w=None, **kw):
    """Values and draft gradient of (values * w).sum() (w random if None, 0 at inf)."""
    x = d.clone().requires_grad_(True)
    vals = D.token_divergence_rows(backend, x, t, kind, T, **kw)
    if w is None:
        w = torch.linspace(0.5, 1.5, d.shape[0], device=d.device)
    (torch.where(vals.isfinite(), vals, 0.0) * w).sum().backward()
    return vals.detach(), x.grad, w


def check_against_reference(vals, grad, w, d, t, kind, T):
    dtype = d.dtype
    rtol, atol = VAL_TOL[dtype]
    ref = ref_values(d, t, kind, T)
    torch.testing.assert_close(vals.double(), ref, rtol=rtol, atol=atol)
    assert grad.dtype == dtype
    fin = ref.isfinite()
    gref = ref_grad(d, t, kind, T) * torch.where(fin, w.double(), 0.0)[:, None]
    grtol = GRAD_RTOL[dtype]
    gatol = grtol * gref.abs().max().item() if dtype != torch.float32 else 1e-7
    torch.testing.assert_close(grad.double(), gref, rtol=grtol, atol=gatol)


# --- values and gradients -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_rows_match_float64_reference(backend, kind, dtype, small_tiles):
    d, t = make_logits(dtype=dtype, device=dev_for(backend))
    T = 0.7
    vals, grad, w = run_rows(backend, d, t, kind, T)
    assert vals.dtype == torch.float32 and vals.shape == (6,)
    check_against_reference(vals, grad, w, d, t, kind, T)
    if kind in ("ce", "kl"):
        assert torch.isinf(vals[3]) and vals[3] > 0 and bool(vals[[0, 1, 2, 4, 5]].isfinite().all())
    else:
        assert bool(vals.isfinite().all())
    assert bool(grad.isfinite().all())


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=needs_cpp)])
def test_mixed_dtypes_match_float64_reference(backend):
    """Draft and target may differ in dtype; each is read as it is."""
    for dd, td in ((torch.bfloat16, torch.float32), (torch.float32, torch.float16), (torch.float16, torch.bfloat16)):
        d, _ = make_logits(dtype=dd, seed=7)
        _, t = make_logits(dtype=td, seed=7)
        for kind in KINDS:
            vals, grad, w = run_rows(backend, d, t, kind, 0.9)
            check_against_reference(vals, grad, w, d, t, kind, 0.9)


@pytest.mark.parametrize("kind", [pytest.param(k, marks=needs_triton) for k in KINDS])
def test_triton_equals_torch(kind, small_tiles):
    """The Triton kernel (interpreter on the CPU) equals the torch path, values and grads,
    with grad and without, for N=8, V=300 (5 tiles) and a one-tile V=37."""
    for V, N in ((300, 8), (37, 3)):
        d, t = make_logits(N=N, V=V, device=TRITON_DEVICE, seed=V)
        v_torch, g_torch, _ = run_rows("torch", d, t, kind, 1.3)
        v_tri, g_tri, _ = run_rows("triton", d, t, kind, 1.3)
        torch.testing.assert_close(v_tri, v_torch, rtol=2e-6, atol=2e-6)
        torch.testing.assert_close(g_tri, g_torch, rtol=1e-5, atol=1e-7)
        with torch.no_grad():
            v_nograd = D.token_divergence_rows("triton", d, t, kind, 1.3)
        torch.testing.assert_close(v_nograd, v_tri, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64(kind):
    g = torch.Generator().manual_seed(1)
    d = (torch.randn(3, 11, generator=g, dtype=torch.float64) * 1.5).requires_grad_(True)
    t = torch.randn(3, 11, generator=g, dtype=torch.float64) * 1.5
    t[1, 4] = float("-inf")

    def f(x):
        return D.token_divergence_rows("torch", x, t, kind, 0.8, inplace_backward=False)

    assert f(d).dtype == torch.float64
    torch.autograd.gradcheck(f, (d,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_float64_reference_formulas_match_autograd():
    """ref_grad (used for the low-precision checks) is the autograd gradient of ref_values."""
    d, t = make_logits(N=4, V=50, special=False)
    d = d.double()
    for kind in KINDS:
        x = d.clone().requires_grad_(True)
        w = torch.rand(4, dtype=torch.float64)
        (ref_values(x, t, kind, 1.7) * w).sum().backward()
        torch.testing.assert_close(x.grad, ref_grad(d, t, kind, 1.7) * w[:, None])


def test_backward_is_single_use_unless_out_of_place():
    d, t = make_logits(N=4, V=40, special=False)
    x = d.clone().requires_grad_(True)
    vals = D.token_divergence_rows("torch", x, t, "kl", 1.0)
    vals.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already backpropagated once"):
        vals.sum().backward()
    y = d.clone().requires_grad_(True)
    vals = D.token_divergence_rows("torch", y, t, "kl", 1.0, inplace_backward=False)
    vals.sum().backward(retain_graph=True)
    vals.sum().backward()
    torch.testing.assert_close(y.grad, 2 * x.grad)


def test_target_gets_no_gradient_and_no_grad_mode():
    d, t = make_logits(N=3, V=20, special=False)
    x = d.clone().requires_grad_(True)
    y = t.clone().requires_grad_(True)
    sk.token_divergence(x, y, kind="ce", backend="torch").backward()
    assert y.grad is None and x.grad is not None
    with torch.no_grad():
        v = sk.token_divergence(x, y, kind="ce", backend="torch")
    assert not v.requires_grad
    assert not sk.token_divergence(d, y, kind="ce", backend="torch").requires_grad


# --- special values -----------------------------------------------------------------------

@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_identical_logits(backend, small_tiles):
    d, _ = make_logits(N=3, V=300, device=dev_for(backend), special=False)
    d[1, :80] = float("-inf")
    entropy = -(torch.softmax(d.double(), -1) * torch.log_softmax(d.double(), -1)).nan_to_num().sum(-1)
    with torch.no_grad():
        out = {k: D.token_divergence_rows(backend, d, d.clone(), k, 1.0) for k in KINDS}
    torch.testing.assert_close(out["ce"].double(), entropy, rtol=1e-5, atol=1e-5)
    assert bool((out["kl"].abs() < 1e-6).all())
    assert bool((out["tv"].abs() < 1e-6).all())
    torch.testing.assert_close(out["alpha"], torch.ones(3, device=d.device), rtol=0, atol=1e-6)
    assert bool((out["neg_log_alpha"].abs() < 1e-6).all())


@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_identical_rows_have_exactly_zero_gradient(backend, small_tiles):
    """alpha / tv: the subgradient takes [q_k < p_k] = 0 at ties, so p == q gives exactly 0
    (CE / KL: q - p is exactly 0 as well on the torch and C++ paths)."""
    for dtype in DTYPES:
        d, _ = make_logits(N=3, V=300, dtype=dtype, device=dev_for(backend), special=False)
        d[1, :80] = float("-inf")
        for kind in KINDS if backend != "triton" else ("alpha", "tv"):
            x = d.clone().requires_grad_(True)
            D.token_divergence_rows(backend, x, d.clone(), kind, 0.8).sum().backward()
            assert (x.grad == 0).all(), (kind, dtype)


@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_nan_inf_rows(backend, small_tiles):
    """NaN/+inf or all -inf -> NaN value and NaN gradient in that row only, unless the row's
    incoming gradient is 0 (masked), which gives an exact 0 gradient."""
    d, t = make_logits(N=6, V=100, device=dev_for(backend), special=False)
    d[1, 70] = float("nan")
    t[2, 3] = float("inf")
    d[3] = float("-inf")
    t[4] = float("-inf")
    for kind in KINDS:
        for w in ([1.0] * 6, [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]):
            x = d.clone().requires_grad_(True)
            vals = D.token_divergence_rows(backend, x, t, kind, 1.0)
            assert vals[1:5].isnan().all() and vals[[0, 5]].isfinite().all(), kind
            w = torch.tensor(w, device=d.device)
            vals.backward(w)  # grad_output = w
            assert x.grad[[0, 5]].isfinite().all(), kind
            if w[1] == 1:
                assert x.grad[1:5].isnan().all(), kind  # the whole row, on every backend
            else:
                assert (x.grad[1:5] == 0).all(), kind


@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_neg_log_alpha_disjoint_supports(backend, small_tiles):
    """alpha = 0 (disjoint supports): -log alpha is +inf and its gradient 0, on every backend."""
    d = torch.full((2, 40), float("-inf"), device=dev_for(backend))
    t = torch.full((2, 40), float("-inf"), device=dev_for(backend))
    d[:, :20] = torch.randn(2, 20, device=d.device)
    t[:, 20:] = torch.randn(2, 20, device=d.device)
    x = d.clone().requires_grad_(True)
    vals = D.token_divergence_rows(backend, x, t, "neg_log_alpha", 1.0)
    assert bool(torch.isposinf(vals).all())
    vals.backward(torch.ones_like(vals))
    assert (x.grad == 0).all()


@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_vocab_of_one(backend, small_tiles):
    d = torch.randn(2, 1, device=dev_for(backend))
    t = torch.randn(2, 1, device=dev_for(backend))
    expect = {"ce": 0.0, "kl": 0.0, "tv": 0.0, "alpha": 1.0, "neg_log_alpha": 0.0}
    for kind in KINDS:
        vals, grad, _ = run_rows(backend, d, t, kind, 2.0)
        torch.testing.assert_close(vals, torch.full((2,), expect[kind], device=d.device))
        assert (grad == 0).all()


# --- the C++ backend runs its own kernel ------------------------------------------------------

@pytest.mark.parametrize("kind", [pytest.param(k, marks=needs_cpp) for k in KINDS])
def test_cpp_runs_its_own_kernel(kind, monkeypatch):
    """backend="cpp" is csrc/divergence.cpp: with the torch path disabled it still runs, and
    gives exactly what the registered C++ op gives."""
    d, t = make_logits()
    if kind == "neg_log_alpha":     # the C++ alpha kernel, then -log and the row scaling of the C++ op
        alpha, want_g = backends.cpp_op("token_divergence")(d, t, "alpha", 0.7, True)
        backends.cpp_op("scale_rows_")(want_g, reference.neg_log_alpha_scale(alpha))
        want_v = -torch.log(alpha)
    else:
        want_v, want_g = backends.cpp_op("token_divergence")(d, t, kind, 0.7, True)

    def torch_path(*args, **kwargs):
        raise AssertionError("backend='cpp' ran the torch path")

    monkeypatch.setattr(reference, "token_divergence_ref", torch_path)
    x = d.clone().requires_grad_(True)
    vals = D.token_divergence_rows("cpp", x, t, kind, 0.7)
    vals.backward(torch.ones_like(vals))
    assert torch.equal(vals, want_v) and torch.equal(x.grad, want_g)
    out = sk.token_divergence(d, t, kind=kind, temperature=0.7, reduction="none", backend="cpp")
    assert torch.equal(out, want_v)
    with pytest.raises(AssertionError, match="torch path"):
        sk.token_divergence(d, t, kind=kind, backend="torch")


@pytest.mark.parametrize("kind", [pytest.param(k, marks=needs_cpp) for k in KINDS])
def test_auto_takes_cpp_on_the_cpu(kind, monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert backends.select("token_divergence", "auto", torch.device("cpu")) == "cpp"
    calls = []
    real = backends.cpp_op
    monkeypatch.setattr(backends, "cpp_op", lambda name: calls.append(name) or real(name))
    d, t = make_logits(N=4, V=50, special=False)
    x = d.clone().requires_grad_(True)
    sk.token_divergence(x, t, kind=kind).backward()
    assert calls[0] == "token_divergence"


def test_select_names_the_op_when_cpp_is_missing(monkeypatch):
    monkeypatch.setattr(backends, "load_cpp_extension", lambda: (None, "ImportError: pretend _C was not built"))
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    cpu = torch.device("cpu")
    assert backends.select("token_divergence", "auto", cpu) == "torch"
    assert backends.available("cpu", "token_divergence")["cpp"] is not None
    with pytest.raises(RuntimeError, match=r"backend='cpp' was requested for token_divergence.*pretend"):
        backends.select("token_divergence", "cpp", cpu)
    d, t = make_logits(N=2, V=20, special=False)
    with pytest.raises(RuntimeError, match="token_divergence"):
        sk.token_divergence(d, t, backend="cpp")
    with pytest.raises(ValueError, match="op must be one of"):
        backends.select("sample", "auto", cpu)


@needs_cpp[0]
@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_cpp_isa_variants_match_float64_reference(isa, monkeypatch):
    """Every compiled variant of the row kernel (SPECFAIR_CPU_ISA caps the choice)."""
    monkeypatch.setenv("SPECFAIR_CPU_ISA", isa)
    if torch.ops.specfair_kernels.cpu_isa() != isa:
        pytest.skip(f"this CPU does not run {isa}")
    for dtype in DTYPES:
        d, t = make_logits(N=6, V=1000, dtype=dtype, seed=4)
        for kind in KINDS:
            vals, grad, w = run_rows("cpp", d, t, kind, 1.3)
            check_against_reference(vals, grad, w, d, t, kind, 1.3)


@needs_cpp[0]
def test_cpp_thread_count_and_float64():
    d, t = make_logits(N=9, V=700, seed=5)
    old = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(run_rows("cpp", d, t, "alpha", 0.9))
    finally:
        torch.set_num_threads(old)
    for o in outs[1:]:
        assert torch.equal(o[0], outs[0][0]) and torch.equal(o[1], outs[0][1])
    with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
        D.token_divergence_rows("cpp", d.double(), t.double(), "ce", 1.0)


# --- public API: reductions, shapes, mask, per_task ------------------------------------------

def api_backends():
    out = []
    for name in ("torch", "cpp", "triton"):
        dev = dev_for(name)
        why = backends.unavailable_reason(name, torch.device(dev), "token_divergence")
        marks = [pytest.mark.skipif(why is not None, reason=str(why))]
        if name == "triton" and dev == "cpu":
            marks.append(pytest.mark.slow)
        out.append(pytest.param(name, marks=marks))
    return out


@pytest.mark.parametrize("backend", api_backends())
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=("float32", "bfloat16"))
def test_api_reductions(backend, dtype, small_tiles):
    """Every reduction, with a mask (over a NaN row), [2, 3, 2, V] inputs and T != 1.  The
    reductions live in api.py; the interpreted Triton backend runs a subset (speed)."""
    interpreted = backend == "triton" and dev_for(backend) == "cpu"
    if interpreted and dtype != torch.float32:
        pytest.skip("interpreter: bf16 Triton values/grads are covered by test_rows_match_float64_reference")
    dev = dev_for(backend)
    lead, V, T, nt = (2, 3, 2), 90, 2.5, 4
    d, t = make_logits(N=12, V=V, dtype=dtype, device=dev, special=False)
    d, t = d.reshape(*lead, V), t.reshape(*lead, V)
    d[1, 2, 0, :10] = float("-inf")
    g = torch.Generator().manual_seed(3)
    tasks = torch.tensor([0, 2, 0, 2, 1, 0, 2, 2, 0, 1, 1, 0]).reshape(lead).to(dev)  # task 3: none
    mask = (torch.rand(lead, generator=g) > 0.3).to(dev)
    mask[0, 0, 0] = False
    d[0, 0, 0, 5] = float("nan")  # garbage under the mask: must not poison anything
    for kind in (("kl", "alpha") if interpreted else KINDS):
        ref = ref_values(d, t, kind, T)  # [2, 3, 2]
        gref_rows = ref_grad(d, t, kind, T)
        ref = torch.where(mask, ref, 0.0)
        n_keep = mask.sum().double()

        def expect_grad(row_w, gref_rows=gref_rows):  # masked rows: exactly 0 (their reference may be NaN)
            return torch.where(row_w[..., None] != 0, gref_rows * row_w[..., None], 0.0)

        def run(reduction, kind=kind, **kw):
            x = d.clone().requires_grad_(True)
            out = sk.token_divergence(x, t, kind=kind, temperature=T, reduction=reduction, mask=mask,
                                      backend=backend, **kw)
            wt = torch.arange(1.0, out.numel() + 1, device=dev).reshape(out.shape)
            (out * wt).sum().backward()
            return out, x.grad, wt

        rtol, atol = VAL_TOL[dtype]
        gt = dict(rtol=GRAD_RTOL[dtype], atol=1e-7 if dtype == torch.float32 else 1e-3)
        out, grad, wt = run("none")
        assert out.shape == lead and out.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol)
        torch.testing.assert_close(grad.double(), expect_grad(torch.where(mask, wt.double(), 0.0)), **gt)
        assert (grad[0, 0, 0] == 0).all()

        out, grad, _ = run("sum")
        torch.testing.assert_close(out.double(), ref.sum(), rtol=rtol, atol=atol * 12)
        torch.testing.assert_close(grad.double(), expect_grad(mask.double()), **gt)

        out, grad, _ = run("mean")
        torch.testing.assert_close(out.double(), ref.sum() / n_keep, rtol=rtol, atol=atol)
        torch.testing.assert_close(grad.double(), expect_grad(mask.double() / n_keep), **gt)

        out, grad, wt = run("per_task", task_ids=tasks, num_tasks=nt)
        assert out.shape == (nt,)
        cnt = torch.zeros(nt, dtype=torch.float64, device=dev).index_add(0, tasks.flatten(), mask.flatten().double())
        exp = torch.zeros(nt, dtype=torch.float64, device=dev).index_add(0, tasks.flatten(), ref.flatten())
        exp = exp / cnt.clamp_min(1)
        assert out[3] == 0
        torch.testing.assert_close(out.double(), exp, rtol=rtol, atol=atol)
        row_w = (wt.double() / cnt.clamp_min(1))[tasks] * mask.double()
        torch.testing.assert_close(grad.double(), expect_grad(row_w), **gt)


def test_api_mean_with_everything_masked_is_zero():
    d, t = make_logits(N=4, V=16, special=False)
    x = d.clone().requires_grad_(True)
    out = sk.token_divergence(x, t, kind="kl", mask=torch.zeros(4, dtype=torch.bool), backend="torch")
    out.backward()
    assert out.item() == 0 and (x.grad == 0).all()


# --- memory bound of the torch path -----------------------------------------------------------

class _LargestFloatOutput(TorchDispatchMode):
    """Records the largest float32/float64 tensor produced by any op."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(o, torch.Tensor) and o.dtype in (torch.float32, torch.float64):
                self.largest = max(self.largest, o.numel())
        return out


def test_torch_path_chunks_bound_temporaries(monkeypatch):
    """No fp32 intermediate spans more than one chunk of rows, and a chunk's worst-case
    temporaries (TEMPS_PER_ELEMENT fp32 [rows, V]) fit in CHUNK_BYTES.  (tracemalloc does
    not see torch's allocator, so the bound is checked on the op outputs instead.)"""
    N, V = 64, 50_000
    rows = reference.chunk_rows(N, V)
    assert 1 <= rows < N
    assert reference.TEMPS_PER_ELEMENT * rows * V * 4 <= reference.CHUNK_BYTES
    assert reference.chunk_rows(3, 10_000_000) == 1 and reference.chunk_rows(5, 10) == 5
    d = torch.randn(N, V, dtype=torch.bfloat16)
    t = torch.randn(N, V, dtype=torch.bfloat16)
    x = d.clone().requires_grad_(True)
    for kind in ("kl", "alpha"):
        with _LargestFloatOutput() as spy:
            vals = D.token_divergence_rows("torch", x, t, kind, 1.0)
        assert spy.largest <= rows * V, (kind, spy.largest, rows * V)
        assert vals.shape == (N,)
    # Chunking does not change results: 7 rows in chunks of 2 vs all at once.
    d, t = make_logits(N=7, V=300)
    whole = run_rows("torch", d, t, "alpha", 1.0)
    monkeypatch.setattr(reference, "CHUNK_BYTES", reference.TEMPS_PER_ELEMENT * 4 * 300 * 2)
    assert reference.chunk_rows(7, 300) == 2
    parts = run_rows("torch", d, t, "alpha", 1.0)
    torch.testing.assert_close(parts[0], whole[0], rtol=0, atol=0)
    torch.testing.assert_close(parts[1], whole[1], rtol=0, atol=0)


# --- validation: same errors on every backend ---------------------------------------------------

def _bad_calls():
    d = torch.randn(2, 3, 8)
    t = torch.randn(2, 3, 8)
    tid = torch.zeros(2, 3, dtype=torch.int64)
    def case(types, call, name):
        return types, call, name

    return {
        "shape": case((ValueError,), lambda b: sk.token_divergence(d, t[:, :2], backend=b), "shape"),
        "vocab": case((ValueError,), lambda b: sk.token_divergence(d, t[..., :7], backend=b), "vocabulary"),
        "int_logits": case((TypeError,), lambda b: sk.token_divergence(d.long(), t, backend=b), "draft_logits"),
        "f64_target": case((TypeError,), lambda b: sk.token_divergence(d, t.double(), backend=b), "target_logits"),
        "not_tensor": case((TypeError,), lambda b: sk.token_divergence(d.tolist(), t, backend=b), "draft_logits"),
        "device": case((ValueError,), lambda b: sk.token_divergence(d, t.to("meta"), backend=b), "target_logits"),
        "kind": case((ValueError,), lambda b: sk.token_divergence(d, t, kind="js", backend=b), "kind"),
        "reduction": case((ValueError,), lambda b: sk.token_divergence(d, t, reduction="max", backend=b),
                          "reduction"),
        "temp_zero": case((ValueError,), lambda b: sk.token_divergence(d, t, temperature=0.0, backend=b),
                          "temperature"),
        "temp_neg": case((ValueError,), lambda b: sk.token_divergence(d, t, temperature=-1, backend=b),
                         "temperature"),
        "temp_type": case((TypeError,), lambda b: sk.token_divergence(d, t, temperature="1", backend=b),
                          "temperature"),
        "mask_shape": case((ValueError,), lambda b: sk.token_divergence(
            d, t, mask=torch.ones(2, 4, dtype=torch.bool), backend=b), "mask"),
        "mask_dtype": case((TypeError,), lambda b: sk.token_divergence(d, t, mask=torch.ones(2, 3), backend=b),
                           "mask"),
        "task_range": case((ValueError,), lambda b: sk.token_divergence(
            d, t, reduction="per_task", task_ids=tid + 5, num_tasks=3, backend=b), "task_ids"),
        "task_negative": case((ValueError,), lambda b: sk.token_divergence(
            d, t, reduction="per_task", task_ids=tid - 1, num_tasks=3, backend=b), "task_ids"),
        "per_task_no_num": case((ValueError,), lambda b: sk.token_divergence(
            d, t, reduction="per_task", task_ids=tid, backend=b), "num_tasks"),
        "num_tasks_zero": case((ValueError,), lambda b: sk.token_divergence(
            d, t, reduction="per_task", task_ids=tid, num_tasks=0, backend=b), "num_tasks"),
        "task_dtype": case((TypeError,), lambda b: sk.token_divergence(
            d, t, reduction="per_task", task_ids=tid.float(), num_tasks=3, backend=b), "task_ids"),
    }


BAD = _bad_calls()
ERROR_BACKENDS = ["torch", "cpp"] + (["triton"] if TRITON_ERR is None else [])


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_same_error_on_every_backend(case):
    """Validation precedes backend selection, so even an unavailable backend (cpp without
    the extension) reports the bad argument, with the same message everywhere."""
    types, call, name = BAD[case]
    messages = set()
    for b in ERROR_BACKENDS:
        with pytest.raises(types, match=name) as err:
            call(b)
        messages.add((type(err.value), str(err.value)))
    assert len(messages) == 1, messages


def test_rows_rejects_unknown_kind_and_backend():
    d = torch.randn(2, 5)
    with pytest.raises(ValueError, match="kind"):
        D.token_divergence_rows("torch", d, d, "js", 1.0)
    with pytest.raises(ValueError, match="backend"):
        D.token_divergence_rows("cuda", d, d, "ce", 1.0)
