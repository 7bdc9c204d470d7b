"""Bad input, backend selection, and the defined behaviour for NaN / infinite logits.

Validation happens in `api.verify` before dispatch, so every backend must raise the same
exception with the same message, naming the offending argument.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

import specfair_kernels as sk
from specfair_kernels import backends as sk_backends
from specfair_kernels import stats as sk_stats
from specfair_kernels.stats import DIVERGENCE_FIELDS

B, K, V = 3, 2, 8
NAN, INF = float("nan"), float("inf")


def _inputs(verify_case, device="cpu"):
    """target_logits [B, K+1, V], draft_logits [B, K, V] and in-range draft_tokens [B, K]."""
    case = verify_case(0, B=B, K=K, V=V, scale=1.0, ragged=False, device=device)
    return {k: case[k] for k in ("target_logits", "draft_logits", "draft_tokens")}


def _error(verify_case, backend, device="cpu", **overrides):
    kw = _inputs(verify_case, device)
    kw.update(overrides)
    kw.setdefault("seed", 1)
    try:
        sk.verify(**kw, backend=backend)
    except (ValueError, TypeError, RuntimeError) as exc:
        return exc
    raise AssertionError(f"no error for {sorted(overrides)}")


class _Inputs:
    """What a bad case is built from: the good inputs and two TaskStats on `dev`."""

    def __init__(self, verify_case, dev):
        t = _inputs(verify_case, dev)
        self.tgt, self.drf, self.tok = t["target_logits"], t["draft_logits"], t["draft_tokens"]
        self.dev = dev
        self.stats_small = sk.TaskStats(2, K - 1, device=dev)
        self.stats = sk.TaskStats(2, K, device=dev)

    def on(self, x):
        return x.to(self.dev)


# Each case: (id, expected exception, regex the message must match, overrides(_Inputs)).
BAD_CASES = [
    # shapes
    ("target_2d", ValueError, "target_logits", lambda c: dict(target_logits=c.tgt[:, 0])),
    ("target_no_positions", ValueError, "target_logits",
     lambda c: dict(target_logits=c.tgt[:, :0], draft_logits=c.drf[:, :0], draft_tokens=c.tok[:, :0])),
    ("target_empty_vocab", ValueError, "target_logits", lambda c: dict(target_logits=c.tgt[..., :0])),
    ("draft_tokens_K_plus_1", ValueError, "draft_tokens",
     lambda c: dict(draft_tokens=torch.cat([c.tok, c.tok[:, :1]], 1))),
    ("draft_tokens_batch", ValueError, "draft_tokens", lambda c: dict(draft_tokens=c.tok[:2])),
    ("draft_tokens_1d", ValueError, "draft_tokens", lambda c: dict(draft_tokens=c.tok[0])),
    ("draft_logits_K_plus_1", ValueError, "draft_logits", lambda c: dict(draft_logits=c.tgt)),
    ("draft_logits_K_minus_1", ValueError, "draft_logits", lambda c: dict(draft_logits=c.drf[:, :1])),
    ("draft_logits_vocab", ValueError, "draft_logits.*vocabulary", lambda c: dict(draft_logits=c.drf[..., :V - 1])),
    ("draft_logits_batch", ValueError, "draft_logits.*batch", lambda c: dict(draft_logits=c.drf[:2])),
    ("draft_logits_2d", ValueError, "draft_logits", lambda c: dict(draft_logits=c.drf[:, 0])),
    ("num_draft_shape", ValueError, "num_draft", lambda c: dict(num_draft=c.on(torch.tensor([1, 1])))),
    ("temperature_shape", ValueError, "temperature", lambda c: dict(temperature=c.on(torch.ones(B + 1)))),
    ("seed_shape", ValueError, "seed", lambda c: dict(seed=c.on(torch.zeros(2, B, dtype=torch.int64)))),
    # dtypes
    ("target_int", TypeError, "target_logits", lambda c: dict(target_logits=c.tgt.long())),
    ("target_float64", TypeError, "target_logits", lambda c: dict(target_logits=c.tgt.double())),
    ("target_not_tensor", TypeError, "target_logits", lambda c: dict(target_logits=c.tgt.tolist())),
    ("draft_logits_int", TypeError, "draft_logits", lambda c: dict(draft_logits=c.drf.int())),
    ("draft_logits_float64", TypeError, "draft_logits", lambda c: dict(draft_logits=c.drf.double())),
    ("draft_tokens_float", TypeError, "draft_tokens", lambda c: dict(draft_tokens=c.tok.float())),
    ("draft_tokens_int16", TypeError, "draft_tokens", lambda c: dict(draft_tokens=c.tok.short())),
    ("draft_tokens_list", TypeError, "draft_tokens", lambda c: dict(draft_tokens=c.tok.tolist())),
    ("num_draft_float", TypeError, "num_draft", lambda c: dict(num_draft=1.0)),
    ("num_draft_float_tensor", TypeError, "num_draft", lambda c: dict(num_draft=c.on(torch.ones(B)))),
    ("num_draft_bool", TypeError, "num_draft", lambda c: dict(num_draft=True)),
    ("temperature_str", TypeError, "temperature", lambda c: dict(temperature="1")),
    ("temperature_int_tensor", TypeError, "temperature",
     lambda c: dict(temperature=c.on(torch.ones(B, dtype=torch.int64)))),
    ("seed_float", TypeError, "seed", lambda c: dict(seed=1.5)),
    ("seed_float_tensor", TypeError, "seed", lambda c: dict(seed=c.on(torch.ones(B)))),
    ("step_float", TypeError, "step", lambda c: dict(step=0.5)),
    ("task_ids_float", TypeError, "task_ids", lambda c: dict(task_ids=c.on(torch.zeros(B)), stats=c.stats)),
    ("return_divergence_int", TypeError, "return_divergence", lambda c: dict(return_divergence=1)),
    ("check_values_int", TypeError, "check_values", lambda c: dict(check_values=1)),
    ("stats_wrong_type", TypeError, "stats", lambda c: dict(stats={"counts": 0})),
    # devices ("meta" is always another device)
    ("draft_tokens_meta", ValueError, "draft_tokens.*meta", lambda c: dict(draft_tokens=c.tok.to("meta"))),
    ("draft_logits_meta", ValueError, "draft_logits.*meta", lambda c: dict(draft_logits=c.drf.to("meta"))),
    ("num_draft_meta", ValueError, "num_draft.*meta",
     lambda c: dict(num_draft=torch.ones(B, dtype=torch.int64, device="meta"))),
    ("temperature_meta", ValueError, "temperature.*meta", lambda c: dict(temperature=torch.ones(B, device="meta"))),
    ("seed_meta", ValueError, "seed.*meta", lambda c: dict(seed=torch.ones(B, dtype=torch.int64, device="meta"))),
    ("stats_meta", ValueError, "stats.*meta", lambda c: dict(stats=sk.TaskStats(2, K, device="meta"))),
    ("task_ids_meta", ValueError, "task_ids.*meta",
     lambda c: dict(stats=c.stats, task_ids=torch.zeros(B, dtype=torch.int64, device="meta"))),
    # values
    ("draft_token_too_big", ValueError, "draft_tokens", lambda c: dict(draft_tokens=c.on(torch.full((B, K), V)))),
    ("draft_token_negative", ValueError, "draft_tokens",
     lambda c: dict(draft_tokens=c.on(torch.tensor([[0, 1], [-1, 0], [2, 3]])))),
    ("draft_token_negative_at_valid_pos", ValueError, "draft_tokens",
     lambda c: dict(draft_tokens=c.on(torch.tensor([[0, -1], [1, 1], [2, 2]])),
                    num_draft=c.on(torch.tensor([2, 0, 1])))),
    ("num_draft_negative", ValueError, "num_draft", lambda c: dict(num_draft=-1)),
    ("num_draft_above_K", ValueError, "num_draft", lambda c: dict(num_draft=c.on(torch.tensor([0, K + 1, 1])))),
    ("temperature_negative", ValueError, "temperature", lambda c: dict(temperature=-0.5)),
    ("temperature_nan", ValueError, "temperature", lambda c: dict(temperature=NAN)),
    ("temperature_inf", ValueError, "temperature", lambda c: dict(temperature=INF)),
    ("temperature_row_nan", ValueError, "temperature", lambda c: dict(temperature=c.on(torch.tensor([1.0, NAN, 0.0])))),
    ("temperature_row_negative", ValueError, "temperature",
     lambda c: dict(temperature=c.on(torch.tensor([1.0, 0.5, -1e-3])))),
    ("step_negative", ValueError, "step", lambda c: dict(step=-1)),
    ("task_ids_above_T", ValueError, "task_ids", lambda c: dict(stats=c.stats, task_ids=c.on(torch.tensor([0, 2, 1])))),
    ("task_ids_negative", ValueError, "task_ids",
     lambda c: dict(stats=c.stats, task_ids=c.on(torch.tensor([0, -1, 1])))),
    ("task_ids_without_stats", ValueError, "task_ids",
     lambda c: dict(task_ids=c.on(torch.zeros(B, dtype=torch.int64)))),
    ("stats_max_draft_too_small", ValueError, "max_draft", lambda c: dict(stats=c.stats_small)),
    # backend argument
    ("backend_unknown", ValueError, "backend.*'nope'", lambda c: dict(backend_override="nope")),
    ("backend_not_str", TypeError, "backend", lambda c: dict(backend_override=3)),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_raises_naming_the_argument(any_backend, case, verify_case):
    _, exc_type, pattern, build = case
    overrides = build(_Inputs(verify_case, any_backend.device))
    own_backend = "backend_override" in overrides
    backend = overrides.pop("backend_override", any_backend.name)
    err = _error(verify_case, backend, any_backend.device, **overrides)
    assert type(err) is exc_type, f"{type(err).__name__}: {err}"
    assert re.search(pattern, str(err)), str(err)
    # Identical to the reference backend's message (validation precedes dispatch).
    if not own_backend:
        ref = _error(verify_case, "torch", any_backend.device, **overrides)
        assert type(ref) is type(err) and str(ref) == str(err)


@pytest.mark.parametrize("name", ["seed", "step", "num_draft"])
def test_python_ints_outside_int64_name_the_argument(name, verify_case):
    with pytest.raises((ValueError, TypeError), match=name):
        sk.verify(**_inputs(verify_case), **{"seed": 0, name: 2**64}, backend="torch")


def test_padded_positions_may_hold_anything(any_backend, verify_case):
    """Out-of-range draft tokens after num_draft (e.g. -1 or V) are ignored."""
    kw = _inputs(verify_case, any_backend.device)
    tok = kw["draft_tokens"].clone()
    num_draft = torch.tensor([2, 1, 0], device=any_backend.device)
    tok[1, 1] = -1
    tok[2, 0] = V + 100
    tok[2, 1] = -(2**40)
    out = sk.verify(**{**kw, "draft_tokens": tok}, num_draft=num_draft, seed=5, backend=any_backend.name)
    assert bool((out.num_emitted.cpu() == out.num_accepted.cpu() + 1).all())
    assert bool((out.num_accepted.cpu() <= num_draft.cpu()).all())
    # The same as with in-range garbage at those positions.
    tok2 = tok.clone()
    tok2[1, 1] = 3
    tok2[2] = torch.tensor([4, 5])
    out2 = sk.verify(**{**kw, "draft_tokens": tok2}, num_draft=num_draft, seed=5, backend=any_backend.name)
    assert torch.equal(out.tokens, out2.tokens)


def test_check_values_false_skips_only_the_value_checks(any_backend, verify_case):
    """check_values=False (a caller that must not read the device back) gives the same
    tokens and counts on valid input; types and shapes are still checked."""
    dev = any_backend.device
    kw = {**_inputs(verify_case, dev), "seed": 3, "step": torch.tensor(2, device=dev), "backend": any_backend.name}
    outs, all_stats = [], []
    for check in (True, False):
        stats = sk.TaskStats(2, K, device=dev)
        outs.append(sk.verify(**kw, stats=stats, task_ids=torch.tensor([0, 1, 1], device=dev), check_values=check))
        all_stats.append(stats)
    assert torch.equal(outs[0].tokens, outs[1].tokens)
    assert torch.equal(all_stats[0].counts, all_stats[1].counts)
    with pytest.raises(TypeError, match="draft_tokens"):
        sk.verify(**{**kw, "draft_tokens": kw["draft_tokens"].float()}, check_values=False)


def test_failed_validation_leaves_stats_untouched(any_backend, verify_case):
    dev = any_backend.device
    stats = sk.TaskStats(3, K, device=dev)
    kw = _inputs(verify_case, dev)
    sk.verify(**kw, stats=stats, task_ids=torch.tensor([0, 1, 2], device=dev), seed=0, backend=any_backend.name)
    before = [x.clone() for x in (stats.counts, stats.hist, stats.sums)]
    assert int(stats.counts[:, sk_stats.COUNT_STEPS].sum()) == B
    bad = [
        dict(task_ids=torch.tensor([0, 3, 1], device=dev)),
        dict(task_ids=torch.tensor([0, 1, 1], device=dev), temperature=NAN),
        dict(task_ids=torch.tensor([0, 1, 1], device=dev), draft_tokens=torch.full((B, K), V, device=dev)),
        dict(task_ids=torch.tensor([0, 1, 1], device=dev), num_draft=K + 1),
        dict(task_ids=torch.tensor([0, 1, 1], device=dev), step=-3),
        dict(task_ids=torch.tensor([0, 1, 1], device=dev), backend="nope"),
    ]
    for overrides in bad:
        args = {**kw, "stats": stats, "seed": 0, "backend": any_backend.name, **overrides}
        with pytest.raises((ValueError, TypeError)):
            sk.verify(**args)
        for x, y in zip(before, (stats.counts, stats.hist, stats.sums)):
            assert torch.equal(x, y), overrides


# --- backend selection -------------------------------------------------------------------

def _pretend_cpp_missing(monkeypatch):
    monkeypatch.setattr(sk_backends, "load_cpp_extension", lambda: (None, "ImportError: pretend _C was not built"))


def test_unavailable_backend_raises_runtime_error(monkeypatch, verify_case):
    _pretend_cpp_missing(monkeypatch)
    assert sk.available_backends("cpu")["cpp"] is not None
    with pytest.raises(RuntimeError, match=r"backend='cpp'.*unavailable.*pretend"):
        sk.verify(**_inputs(verify_case), seed=0, backend="cpp")
    # 'auto' falls back to torch instead.
    out = sk.verify(**_inputs(verify_case), seed=0, backend="auto")
    ref = sk.verify(**_inputs(verify_case), seed=0, backend="torch")
    assert torch.equal(out.tokens, ref.tokens)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch, verify_case):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert sk.available_backends("cpu")["triton"] is not None
    with pytest.raises(RuntimeError, match="triton"):
        sk.verify(**_inputs(verify_case), seed=0, backend="triton")


def test_cpp_rejects_gpu_tensors():
    why = sk_backends.unavailable_reason("cpp", torch.device("meta"))
    assert why is not None and "CPU" in why


def test_env_var_selects_the_backend(monkeypatch, verify_case):
    from specfair_kernels import reference

    calls = []
    real = reference.verify_ref

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(reference, "verify_ref", spy)
    monkeypatch.setenv(sk_backends.ENV_VAR, "torch")
    sk.verify(**_inputs(verify_case), seed=0)  # backend="auto" honours SPECFAIR_BACKEND
    assert len(calls) == 1
    # An explicit backend overrides the variable.
    if "cpp" in [n for n, w in sk.available_backends("cpu").items() if w is None]:
        sk.verify(**_inputs(verify_case), seed=0, backend="cpp")
        assert len(calls) == 1
    # The variable naming an unavailable backend is an error that names the variable.
    _pretend_cpp_missing(monkeypatch)
    monkeypatch.setenv(sk_backends.ENV_VAR, "cpp")
    with pytest.raises(RuntimeError, match="SPECFAIR_BACKEND='cpp'"):
        sk.verify(**_inputs(verify_case), seed=0)
    monkeypatch.setenv(sk_backends.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="bogus"):
        sk.verify(**_inputs(verify_case), seed=0)
    monkeypatch.setenv(sk_backends.ENV_VAR, "")  # empty means auto
    sk.verify(**_inputs(verify_case), seed=0)


def test_import_without_triton_in_a_subprocess():
    """`import specfair_kernels` must work where triton cannot be imported."""
    code = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None  # any `import triton` now raises ImportError
        import torch
        import specfair_kernels as sk
        avail = sk.available_backends("cpu")
        assert avail["torch"] is None, avail
        assert avail["triton"] is not None and "triton" in avail["triton"].lower(), avail
        g = torch.Generator().manual_seed(0)
        t, d = torch.randn(2, 3, 8, generator=g), torch.randn(2, 2, 8, generator=g)
        x = torch.randint(0, 8, (2, 2), generator=g)
        a = sk.verify(t, d, x, seed=3, backend="torch")
        b = sk.verify(t, d, x, seed=3)  # auto: C++ or torch, same tokens
        assert torch.equal(a.tokens, b.tokens)
        try:
            sk.verify(t, d, x, seed=3, backend="triton")
        except RuntimeError as exc:
            assert "backend='triton'" in str(exc), exc
        else:
            raise AssertionError("backend='triton' did not raise")
        print("OK")
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_INTERPRET"] = "1"  # even with the interpreter asked for, triton is missing
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stderr[-3000:]


# --- NaN / inf: a defined result ---------------------------------------------------------

def _nan_batch(verify_case, dev, one_hot=False):
    """6 rows, K=3, V=8: rows 1-4 are invalid, 0 and 5 fine, some garbage at padded positions."""
    Bn, Kn, Vn = 6, 3, 8
    case = verify_case(11, B=Bn, K=Kn, V=Vn, scale=1.0, ragged=False)
    target, draft, tokens = case["target_logits"], case["draft_logits"], case["draft_tokens"]
    num_draft = torch.tensor([3, 3, 2, 3, 1, 1])
    target[1, 0, 3] = NAN  # NaN at a used target position
    if one_hot:
        target[2, 2, 5] = INF  # +inf at the bonus position of a ragged row (used)
    else:
        draft[2, 1, 5] = INF  # +inf in a used draft position
    target[3, 2] = -INF  # an all -inf used target distribution
    if one_hot:
        target[4, 1, :] = NAN  # the bonus position of a 1-draft row
    else:
        draft[4, 0] = -INF  # an all -inf used draft distribution
    # Row 0: ordinary -inf entries.  Row 5: garbage at unused positions only.
    target[0, :, ::3] = -INF
    if not one_hot:
        draft[0, :, 7] = -INF
    target[5, 2:] = NAN
    target[5, 3, 0] = INF
    draft[5, 1:] = NAN
    draft[5, 2] = -INF
    tokens[0] = torch.tensor([1, 2, 4])  # p > 0 at row 0's drafts
    tokens[5, 1:] = -1
    return dict(target_logits=target.to(dev), draft_logits=None if one_hot else draft.to(dev),
                draft_tokens=tokens.to(dev), num_draft=num_draft.to(dev),
                temperature=torch.tensor([0.8, 1.0, 0.0, 1.3, 1.0, 0.6], device=dev),
                seed=torch.arange(6, device=dev) + 100, step=2)


@pytest.mark.parametrize("one_hot", [False, True], ids=["dense", "one_hot"])
def test_nan_and_inf_rows_emit_nothing(any_backend, one_hot, verify_case):
    dev = any_backend.device
    kw = _nan_batch(verify_case, dev, one_hot)
    stats = sk.TaskStats(3, 3, device=dev)
    task_ids = torch.tensor([0, 1, 1, 1, 1, 2], device=dev)  # task 1 holds only invalid rows
    out = sk.verify(**kw, return_divergence=True, stats=stats, task_ids=task_ids, backend=any_backend.name)
    tokens, n_acc, n_emit = out.tokens.cpu(), out.num_accepted.cpu(), out.num_emitted.cpu()
    invalid = torch.tensor([False, True, True, True, True, False])
    assert torch.equal(n_emit[invalid], torch.zeros(4, dtype=torch.int32))
    assert torch.equal(n_acc[invalid], torch.zeros(4, dtype=torch.int32))
    assert bool((tokens[invalid] == -1).all())
    used = torch.arange(3)[None, :] < kw["num_draft"].cpu()[:, None]
    for f in DIVERGENCE_FIELDS:
        v = getattr(out, f).cpu()
        assert bool(v[invalid][used[invalid]].isnan().all()), f
        assert bool((v[invalid][~used[invalid]] == 0).all()), f
        assert not bool(v[~invalid].isnan().any()), f

    # The valid rows are unaffected: they match running them alone, without the bad rows.
    for b in (0, 5):
        alone = sk.verify(**{k: (v[b:b + 1] if isinstance(v, torch.Tensor) and v.dim() else v) for k, v in kw.items()},
                          return_divergence=True, backend=any_backend.name)
        assert torch.equal(tokens[b], alone.tokens[0].cpu())
        assert int(n_emit[b]) == int(alone.num_emitted[0]) == int(alone.num_accepted[0]) + 1
        for f in ("alpha", "entropy"):
            torch.testing.assert_close(getattr(out, f)[b].cpu(), getattr(alone, f)[0].cpu())
    # -inf entries in a valid row: nothing emitted with p = 0.
    t0 = kw["target_logits"][0].cpu()
    for j in range(int(n_emit[0])):
        assert t0[j, int(tokens[0, j])] > -INF

    # NaN at unused positions is ignored: replacing it with finite values changes nothing.
    clean = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    clean["target_logits"][5, 2:] = 0.0
    if clean["draft_logits"] is not None:
        clean["draft_logits"][5, 1:] = 0.0
    row5 = sk.verify(**{k: (v[5:6] if isinstance(v, torch.Tensor) and v.dim() else v) for k, v in clean.items()},
                     return_divergence=True, backend=any_backend.name)
    assert torch.equal(tokens[5], row5.tokens[0].cpu())
    torch.testing.assert_close(out.entropy[5].cpu(), row5.entropy[0].cpu())

    # Invalid rows count under COUNT_INVALID and nowhere else.
    counts, hist, sums = stats.counts.cpu(), stats.hist.cpu(), stats.sums.cpu()
    assert counts[:, sk_stats.COUNT_INVALID].tolist() == [0, 4, 0]
    assert bool((counts[1, [c for c in range(counts.shape[1]) if c != sk_stats.COUNT_INVALID]] == 0).all())
    assert bool((hist[1] == 0).all())
    assert bool((sums[1] == 0).all())
    assert not bool(sums.isnan().any())
    ref = sk.TaskStats(3, 3, device=dev)
    keep = (~invalid).nonzero().flatten().tolist()
    sk.verify(**{k: (v[keep] if isinstance(v, torch.Tensor) and v.dim() else v) for k, v in kw.items()},
              stats=ref, task_ids=task_ids[keep], backend=any_backend.name)
    valid_cols = [c for c in range(counts.shape[1]) if c != sk_stats.COUNT_INVALID]
    assert torch.equal(counts[:, valid_cols], ref.counts.cpu()[:, valid_cols])
    assert torch.equal(hist, ref.hist.cpu())
    torch.testing.assert_close(sums, ref.sums.cpu())


def test_all_neg_inf_at_unused_position_is_fine(any_backend, verify_case):
    dev = any_backend.device
    kw = _inputs(verify_case, dev)
    kw["target_logits"][0, 2] = -INF  # K=2: position 2 is the bonus, unused when num_draft=1
    kw["draft_logits"][0, 1] = -INF
    num_draft = torch.tensor([1, 2, 2], device=dev)
    out = sk.verify(**kw, num_draft=num_draft, seed=0, return_divergence=True, backend=any_backend.name)
    assert bool((out.num_emitted.cpu() >= 1).all())
    assert not bool(out.alpha.isnan().any())
    # ...but used, it invalidates the row.
    out = sk.verify(**kw, seed=0, return_divergence=True, backend=any_backend.name)
    assert out.num_emitted.cpu().tolist()[0] == 0
    assert out.num_emitted.cpu().tolist()[1:] == (out.num_accepted.cpu()[1:] + 1).tolist()


def test_64_bit_seeds_wrap_to_int64(verify_case):
    """A seed in [2**63, 2**64) (e.g. random.getrandbits(64)) has the bits of an int64 seed."""
    kw = _inputs(verify_case)
    a = sk.verify(**kw, seed=2**64 - 1, backend="torch")
    b = sk.verify(**kw, seed=-1, backend="torch")
    assert torch.equal(a.tokens, b.tokens)


def test_tiny_temperatures_are_greedy(verify_case):
    """Below 1e-5 a temperature is greedy (logits / tau would overflow and void the row)."""
    kw = _inputs(verify_case)
    a = sk.verify(**kw, temperature=1e-39, seed=3, backend="torch")
    b = sk.verify(**kw, temperature=0.0, seed=3, backend="torch")
    assert torch.equal(a.tokens, b.tokens) and bool((a.num_emitted > 0).all())


def test_bogus_env_backend_names_the_variable(monkeypatch, verify_case):
    monkeypatch.setenv(sk_backends.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="SPECFAIR_BACKEND"):
        sk.verify(**_inputs(verify_case), seed=0)
