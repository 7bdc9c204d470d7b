"""The Triton verify kernel's own machinery: its work schedule (chunks, masked tails, waves,
every call mode) against the reference, its random words against `rng`, its launch plan
and its work model.  Runs in the interpreter without a GPU (tiny shapes)."""
from __future__ import annotations

import pytest
import torch

from specfair_kernels import reference, rng
from specfair_kernels.stats import DIVERGENCE_FIELDS, TaskStats

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
ov = pytest.importorskip("specfair_kernels.ops.verify")
orng = pytest.importorskip("specfair_kernels.ops.rng")

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(B, K, V, one_hot, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(B, K + 1, V, generator=g) * 2
    t[:, :, 5] = float("-inf")
    d = None if one_hot else (t[:, :K] + torch.randn(B, K, V, generator=g)).to(dtype)
    q = torch.softmax((t[:, :K] if one_hot else d).float(), -1)
    x = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, K)
    nd = torch.tensor([K, K, 1, 0, K, K - 1][:B])
    temp = torch.tensor([1.0, 0.0, 0.7, 1.0, 1.3, 1.0][:B])
    args = (t.to(dtype), d, torch.where(torch.arange(K) < nd[:, None], x, -1), nd, temp,
            torch.arange(B, dtype=torch.int64) * 3 + 1, torch.full((B,), 5, dtype=torch.int64))
    return tuple(a.to(DEV) if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("one_hot", [False, True])
@pytest.mark.parametrize("mode", ["tokens", "divergence", "stats", "stats_deterministic"])
def test_chunks_tails_and_waves_match_the_reference(one_hot, mode):
    """6 requests in waves of 2 (pass 2 of a wave after the stats of the next), rows in 4
    chunks of 64 with a masked 8-logit tail, greedy, ragged and K=0-like (num_draft 0) rows."""
    B, K, V = 6, 3, 200
    args = _inputs(B, K, V, one_hot, torch.float32 if one_hot else torch.bfloat16)
    need_div, has_stats, det = ov.MODES[mode]
    stats = TaskStats(2, K, device=DEV, deterministic=det) if has_stats else None
    task = torch.tensor([0, 1, 1, 0, 1, 0], device=DEV) if has_stats else None
    tokens, n_acc, n_emit, div = ov.launch(*args, need_div, task_ids=task, stats=stats, chunk=64, wave=2)
    canonical = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
    r_tok, r_acc, r_emit, r_div = reference.verify_ref(*canonical, need_div)
    assert torch.equal(tokens.cpu(), r_tok) and torch.equal(n_acc.cpu(), r_acc) and torch.equal(n_emit.cpu(), r_emit)
    assert (r_acc < args[3].cpu()).any() and (r_acc[args[4].cpu() > 0] == args[3].cpu()[args[4].cpu() > 0]).any()
    if not need_div:
        assert div is None
        return
    for f in DIVERGENCE_FIELDS:
        torch.testing.assert_close(div[f].cpu(), r_div[f], rtol=1e-4, atol=1e-4, equal_nan=True, msg=f)
    if has_stats:
        want = torch.zeros(2, 4, dtype=torch.float64)
        for b in range(B):
            want[int(task[b])] += torch.stack([r_div[f][b].double().sum() for f in DIVERGENCE_FIELDS])
        torch.testing.assert_close(stats.sums.cpu(), want, rtol=1e-5, atol=1e-5)
        assert int(stats.counts[:, 3].sum()) == B


@triton.jit
def _rng_kernel(seed_ptr, out_ptr, N: tl.constexpr):
    i = tl.arange(0, N)
    seed = tl.load(seed_ptr)
    w = orng.philox_word0(seed, i * 977, i % 5, i * 31 + 7, orng.STREAM_GROUP)
    tl.store(out_ptr + i, w.to(tl.int64))
    tl.store(out_ptr + N + i, orng.exponential(w).to(tl.int32, bitcast=True).to(tl.int64))
    tl.store(out_ptr + 2 * N + i, orng.uniform_accept(w).to(tl.int32, bitcast=True).to(tl.int64))


def test_triton_random_words_match_the_spec():
    assert (int(orng.STREAM_ACCEPT), int(orng.STREAM_RACE), int(orng.STREAM_GROUP), int(orng.RACE_GROUP)) == (
        rng.STREAM_ACCEPT, rng.STREAM_RACE, rng.STREAM_GROUP, rng.RACE_GROUP)
    N = 256
    seed = torch.tensor([-(2**62) + 12345], dtype=torch.int64, device=DEV)
    out = torch.empty(3 * N, dtype=torch.int64, device=DEV)
    _rng_kernel[(1,)](seed, out, N=N)
    out = out.cpu()
    i = torch.arange(N)
    want = rng.philox(seed.cpu(), i * 977, i % 5, i * 31 + 7, rng.STREAM_GROUP)
    assert torch.equal(out[:N] & rng.MASK32, want)
    e = out[N:2 * N].to(torch.int32).view(torch.float32)
    e_ref = rng.exponential(want)
    ulps = (e.view(torch.int32).long() - e_ref.view(torch.int32).long()).abs()
    assert ulps.max() <= 2  # log (Triton libdevice vs torch) and FMA contraction in the series
    u = out[2 * N:].to(torch.int32).view(torch.float32)
    assert torch.equal(u, rng.uniform_accept(want))


def test_launch_plan():
    plan = ov._plan(64, 4, 128256, 2, True, 132, 50 * 2**20)
    assert plan["CHUNK"] % (plan["RACE_ROWS"] * rng.RACE_GROUP) == 0 and plan["CHUNK"] % (plan["ROWS"] * 8) == 0
    assert (plan["NT"] - 1) * plan["CHUNK"] < 128256 <= plan["NT"] * plan["CHUNK"]
    assert plan["VEC"] == 8 and plan["num_warps"] == 8
    assert plan["WAVE"] * 9 * 128256 * 2 <= 50 * 2**20 // ov.L2_FRACTION
    small = ov._plan(1, 4, 151936, 2, True, 132, 50 * 2**20)
    assert small["num_warps"] == 4 and small["NT"] * 5 >= 132  # B=1 spreads over the SMs
    with pytest.raises(ValueError, match="block"):
        ov._plan(64, 4, 128256, 2, True, 132, 50 * 2**20, block=1000)
    assert ov.launch_config(320, 128256, "cpu")[1] % rng.RACE_GROUP == 0


@pytest.mark.parametrize("mode", ["tokens", "divergence", "stats", "stats_deterministic"])
def test_work_model(mode):
    B, K, V, eb = 64, 4, 128256, 2
    launches = ov.work_model(B, K, V, eb, mode)
    need_div, _, det = ov.MODES[mode]
    assert [d["kernel"] for d in launches] == ["_verify_kernel"] + (["_task_reduce_kernel"] if det else [])
    main = launches[0]
    assert main["constexprs"] == ov.variant_constexprs(eb, True, mode)
    assert len(main["loops"]) == (5 if need_div else 4)
    logits = B * (2 * K + 1) * V
    stats_loops = main["loops"][0]["elements"] + main["loops"][1]["elements"]
    assert stats_loops == logits  # every used logit once
    # DRAM: the logits once, plus small per-chunk scratch and outputs; re-reads hit L2.
    assert logits * eb <= main["dram_bytes"] < logits * eb * 1.01
    race = main["loops"][2]["elements"] + main["loops"][3]["elements"]
    rereads = race + (main["loops"][4]["elements"] if need_div else 0)
    assert main["l2_bytes"] == rereads * eb
    assert race == 2 * B * V  # residual races: target and draft of one row per request
    if need_div:
        assert rereads == 2 * B * K * V  # the drafted rows, once more


# --- block mode (method="block"): candidates, the early-out, chunk masses -------------------

def _block_inputs(one_hot, seed, scale):
    """B=6, K=4, V=100 (4 chunks of 32 with a 4-logit tail): a greedy row, a tempered row,
    full rows and one ragged row; drafts sampled from q (p for one-hot drafts)."""
    B, K, V = 6, 4, 100
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(B, K + 1, V, generator=g) * scale
    t[:, :, 5] = float("-inf")
    d = None if one_hot else 0.6 * t[:, :K] + torch.randn(B, K, V, generator=g)
    q = torch.softmax(t[:, :K] if one_hot else d, -1)
    x = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, K)
    nd = torch.tensor([K, K, K, K, K, K - 1])
    temp = torch.tensor([0.0, 0.8, 1.0, 1.0, 1.0, 1.0])
    return (t, d, torch.where(torch.arange(K) < nd[:, None], x, -1), nd, temp,
            torch.randint(-2**62, 2**62, (B,), generator=g), torch.randint(0, 100, (B,), generator=g))


def _block_candidates(t, d, x, nd, temp, seed, step):
    """(log w [B, K+1], candidates [B, K] bool: position i = 1..K is one if i < num_draft in a
    sampling row and the coin u_{i-1} passes the cap w_i), recomputed with the reference's formulas."""
    B, K1, V = t.shape
    K = K1 - 1
    a = t / torch.where(temp == 0, 1.0, temp)[:, None, None]
    xs = x.clamp(0, V - 1)[..., None]
    lpx = a[:, :K].gather(-1, xs)[..., 0] - torch.logsumexp(a[:, :K], -1)
    lqx = torch.zeros_like(lpx)
    if d is not None:
        dd = d / torch.where(temp == 0, 1.0, temp)[:, None, None]
        lqx = dd.gather(-1, xs)[..., 0] - torch.logsumexp(dd, -1)
    lw = [torch.zeros(B)]
    for i in range(K):
        inc = torch.where(lqx[:, i] == float("-inf"), float("inf"), lpx[:, i] - lqx[:, i])
        inc = torch.where(lpx[:, i] == float("-inf"), float("-inf"), inc)
        lw.append(torch.where(lw[-1] == float("-inf"), float("-inf"), torch.clamp(lw[-1] + inc, max=0.0)))
    u = rng.uniform_accept(rng.philox(seed[:, None], 0, torch.arange(K)[None], step[:, None], rng.STREAM_ACCEPT))
    i = torch.arange(1, K + 1)[None]
    lw = torch.stack(lw, 1)
    return lw, (torch.log(u) <= lw[:, 1:]) & (i < nd[:, None]) & (temp[:, None] > 0)


@pytest.mark.parametrize("one_hot,mode", [(False, "tokens"), (False, "stats"), (True, "stats_deterministic")])
def test_block_candidates_early_out_and_chunks_match_the_reference(one_hot, mode):
    """Block mode over 4 chunks and waves of 2: tau strictly inside a row with several
    candidates, one of which (a later one) misses on h; a row whose candidates all miss (tau 0);
    a row where every draft is accepted (the early-out: no vocabulary sum anywhere) and rows
    where positions fail the cap (skipped); all torch.equal to the reference, TaskStats too."""
    args = _block_inputs(one_hot, 1 if one_hot else 393, 6.0 if one_hot else 1.5)
    t, d, x, nd, temp, seed, step = args
    need_div, has_stats, det = ov.MODES[mode]
    rt, ra, re_, rd = reference.verify_ref(*args, True, method="block")
    lw, cand = _block_candidates(*args)
    ncand = cand.sum(1)
    last = torch.where(cand, torch.arange(1, 5)[None], 0).amax(1)
    samp = temp > 0
    # test design: each situation occurs in this batch
    assert bool((samp & (ra >= 1) & (ra < nd) & (ncand >= 2) & (ra < last)).any()), "tau inside, a later miss"
    assert bool((samp & (ra == nd) & (nd >= 2)).any()), "every draft accepted"
    assert bool((samp & (ra < nd) & (ncand < nd - 1)).any()), "positions skipped by the cap"
    if not one_hot:
        assert bool((samp & (ra == 0) & (ncand >= 1)).any()), "candidates that all miss"
    w_tau = lw.gather(1, ra[:, None])[:, 0]
    assert bool((samp & (ra >= 1) & (ra < nd) & (w_tau < -0.7)).any()), "a residual w p - q with w < 1/2"
    dev_args = tuple(a.to(DEV) if isinstance(a, torch.Tensor) else a for a in args)
    stats = TaskStats(2, 4, device=DEV, deterministic=det) if has_stats else None
    task = torch.tensor([0, 1, 1, 0, 1, 0], device=DEV) if has_stats else None
    tokens, n_acc, n_emit, div = ov.launch(*dev_args, need_div, task_ids=task, stats=stats, chunk=32, wave=2,
                                           method="block")
    assert torch.equal(tokens.cpu(), rt) and torch.equal(n_acc.cpu(), ra) and torch.equal(n_emit.cpu(), re_)
    tok_mode = reference.verify_ref(*args, False)[1]
    assert not torch.equal(tok_mode, ra), "test design: block and token mode differ here"
    if has_stats:
        want = TaskStats(2, 4, deterministic=det)
        want.accumulate(task.cpu(), nd, ra, re_ > 0, torch.stack([rd[f].sum(1) for f in DIVERGENCE_FIELDS], 1))
        assert torch.equal(stats.counts.cpu(), want.counts) and torch.equal(stats.hist.cpu(), want.hist)
        torch.testing.assert_close(stats.sums.cpu(), want.sums, rtol=1e-5, atol=1e-5)
        for f in DIVERGENCE_FIELDS:
            torch.testing.assert_close(div[f].cpu(), rd[f], rtol=1e-4, atol=1e-4, equal_nan=True, msg=f)


@pytest.mark.parametrize("mode", ["tokens", "stats"])
def test_work_model_block(mode):
    """The BLOCK variant: pass 2 covers every position, each rejecting request races
    ``candidates`` rows (target and draft), the others the bonus row; the logits still once."""
    B, K, V, eb = 64, 4, 128256, 2
    need_div = ov.MODES[mode][0]
    main = ov.work_model(B, K, V, eb, mode, method="block", residual_fraction=0.75, candidates=2.0)[0]
    token = ov.work_model(B, K, V, eb, mode, residual_fraction=0.75)[0]
    assert main["constexprs"] == ov.variant_constexprs(eb, True, mode, "block") and main["constexprs"]["BLOCK"]
    assert not token["constexprs"]["BLOCK"]
    assert [lp["elements"] for lp in main["loops"][:2]] == [lp["elements"] for lp in token["loops"][:2]]
    assert main["loops"][2]["elements"] == round(2 * 0.75 * 2.0 * B * V)  # two candidate races
    assert main["loops"][3]["elements"] == token["loops"][3]["elements"]  # the bonus races
    if need_div:  # every drafted row once more in pass 2, raced or not
        assert main["loops"][2]["elements"] + main["loops"][4]["elements"] == 2 * B * K * V
    else:
        assert token["programs"] < main["programs"]  # P2 = K+1 positions without divergences too
    logits = B * (2 * K + 1) * V
    assert logits * eb <= main["dram_bytes"] < logits * eb * 1.01
    with pytest.raises(ValueError, match="candidates"):
        ov.work_model(B, K, V, eb, mode, method="block", candidates=K + 1)
    with pytest.raises(ValueError, match="method"):
        ov.variant_constexprs(eb, True, mode, "blocks")
