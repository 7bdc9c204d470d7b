"""TaskStats: what `verify` accumulates per task, the derived views, and distribution."""
from __future__ import annotations

import json
import math

import pytest
import torch

import specfair_kernels as sk
from specfair_kernels import stats as S

SUM_COLS = {"alpha": S.SUM_ALPHA, "kl": S.SUM_KL, "ce": S.SUM_CE, "entropy": S.SUM_ENTROPY}
# verify_case options of these tests: drafts sampled from a drafter correlated with the target.
CASE = dict(scale=1.5, draft="correlated", tokens="from_q", temps=(0.0, 0.5, 1.0, 1.5))


# --- helpers -------------------------------------------------------------------------------

def _expected_from_outputs(outs, batches, T, max_draft):
    """counts/hist/sums recomputed from verify's own outputs (return_divergence=True)."""
    counts = {name: torch.zeros(T, dtype=torch.int64) for name in S.COUNT_NAMES}
    hist = torch.zeros(T, max_draft + 1, dtype=torch.int64)
    sums = torch.zeros(T, len(S.DIVERGENCE_FIELDS), dtype=torch.float64)
    for out, kw in zip(outs, batches):
        t = kw["task_ids"].cpu()
        nd = kw["num_draft"].cpu().long()
        na = out.num_accepted.cpu().long()
        valid = out.num_emitted.cpu() > 0
        v = valid.long()
        per_row = {
            "drafted": nd * v, "accepted": na * v, "emitted": out.num_emitted.cpu().long(),
            "steps": v, "invalid_rows": 1 - v, "tested": (na + (na < nd).long()) * v,
        }
        assert set(S.COUNT_NAMES) <= set(per_row), "a new TaskStats column needs a test"
        for name in S.COUNT_NAMES:
            counts[name].index_add_(0, t, per_row[name])
        hist.index_put_((t[valid], na[valid]), torch.ones(int(valid.sum()), dtype=torch.int64), accumulate=True)
        for f, col in SUM_COLS.items():
            row_sum = getattr(out, f).cpu().double().sum(1)
            sums[:, col].index_add_(0, t[valid], row_sum[valid])
    return torch.stack([counts[n] for n in S.COUNT_NAMES], 1), hist, sums


def _run(stats, kw, backend="torch", **extra):
    return sk.verify(**kw, stats=stats, backend=backend, **extra)


def _assert_stats_equal(a: sk.TaskStats, b: sk.TaskStats, exact_sums=False):
    assert torch.equal(a.counts.cpu(), b.counts.cpu())
    assert torch.equal(a.hist.cpu(), b.hist.cpu())
    if exact_sums:
        assert torch.equal(a.sums.cpu(), b.sums.cpu())
    else:
        torch.testing.assert_close(a.sums.cpu(), b.sums.cpu(), rtol=1e-12, atol=1e-12)


# --- accumulation --------------------------------------------------------------------------

def test_accumulation_equals_sum_of_per_call_outputs(any_backend, verify_case):
    bk = any_backend
    T, K = 3, 3
    B, calls = (4, 2) if bk.interpreted else (24, 3)
    stats = sk.TaskStats(T, K + 1, device=bk.device)  # max_draft > K is fine
    assert stats.counts.shape == (T, len(S.COUNT_NAMES)) and stats.hist.shape == (T, K + 2)
    batches = [verify_case(10 + i, B=B, K=K, V=12, num_tasks=T, device=bk.device, **CASE) for i in range(calls)]
    batches[1]["target_logits"][1, 0, 0] = float("nan")  # one invalid row
    outs = [_run(stats, kw, bk.name, return_divergence=True) for kw in batches]
    counts, hist, sums = _expected_from_outputs(outs, batches, T, K + 1)
    assert torch.equal(stats.counts.cpu(), counts)
    assert torch.equal(stats.hist.cpu(), hist)
    torch.testing.assert_close(stats.sums.cpu(), sums, rtol=1e-5, atol=1e-5)
    assert int(stats.counts[:, S.COUNT_INVALID].sum()) == 1
    assert int(stats.counts[:, S.COUNT_STEPS].sum()) == B * calls - 1
    # Without return_divergence the stats are the same (divergences are computed anyway).
    again = sk.TaskStats(T, K + 1, device=bk.device)
    for kw in batches:
        _run(again, kw, bk.name)
    _assert_stats_equal(stats, again)


def test_default_task_and_no_drafts(verify_case):
    stats = sk.TaskStats(2, 0)
    kw = verify_case(3, B=8, K=0, V=10, num_tasks=2, **CASE)
    del kw["task_ids"]  # default: task 0
    sk.verify(**kw, stats=stats)
    assert stats.counts[0].tolist() == [{"steps": 8, "emitted": 8}.get(n, 0) for n in S.COUNT_NAMES]
    assert stats.hist.tolist() == [[8], [0]]
    assert bool((stats.sums == 0).all())
    assert stats.tokens_per_step()[0] == 1.0
    assert math.isnan(float(stats.acceptance_rate()[0])) and math.isnan(float(stats.expected_acceptance()[0]))


def test_merge_equals_accumulating_both(verify_case):
    T, K = 4, 3
    batches = [verify_case(20 + i, B=32, K=K, V=16, num_tasks=T, **CASE) for i in range(3)]
    a, b, both = sk.TaskStats(T, K), sk.TaskStats(T, K), sk.TaskStats(T, K)
    for i, kw in enumerate(batches):
        _run(a if i < 2 else b, kw)
        _run(both, kw)
    b_before = b.clone()
    assert a.merge(b) is a
    _assert_stats_equal(a, both)
    _assert_stats_equal(b, b_before, exact_sums=True)  # the argument is not modified
    # clone is a deep copy
    c = both.clone()
    c.counts += 1
    assert not torch.equal(c.counts, both.counts)
    with pytest.raises(ValueError, match="num_tasks"):
        a.merge(sk.TaskStats(T + 1, K))
    with pytest.raises(ValueError, match="max_draft"):
        a.merge(sk.TaskStats(T, K + 1))
    with pytest.raises(TypeError, match="TaskStats"):
        a.merge({"counts": a.counts})


def test_reset(verify_case):
    stats = sk.TaskStats(3, 2)
    _run(stats, verify_case(1, B=16, K=2, V=8, num_tasks=3, **CASE))
    assert int(stats.counts.sum()) > 0
    assert stats.reset() is stats
    for x in (stats.counts, stats.hist, stats.sums):
        assert bool((x == 0).all())
    assert stats.counts.dtype == torch.int64 and stats.sums.dtype == torch.float64
    assert all(math.isnan(v) for v in stats.acceptance_rate().tolist())
    _run(stats, verify_case(1, B=16, K=2, V=8, num_tasks=3, **CASE))  # usable again, same result as a fresh one
    fresh = sk.TaskStats(3, 2)
    _run(fresh, verify_case(1, B=16, K=2, V=8, num_tasks=3, **CASE))
    _assert_stats_equal(stats, fresh, exact_sums=True)


def test_constructor_validation():
    for bad in (0, -1, 1.5, True, "3", None):
        with pytest.raises(ValueError, match="num_tasks"):
            sk.TaskStats(bad, 2)
    for bad in (-1, 2.0, False, None):
        with pytest.raises(ValueError, match="max_draft"):
            sk.TaskStats(3, bad)
    s = sk.TaskStats(1, 0)
    assert s.hist.shape == (1, 1) and s.device == torch.device("cpu")
    assert "num_tasks=1" in repr(s)
    with pytest.raises(ValueError, match="cost_ratio"):
        s.expected_speedup(-0.5)


def test_thousands_of_tasks(cheap_backend, verify_case):
    bk = cheap_backend
    T, B, K = 5000, 64, 4
    stats = sk.TaskStats(T, K, device=bk.device)
    batches = [verify_case(100 + i, B=B, K=K, V=32, num_tasks=T, device=bk.device, **CASE) for i in range(4)]
    outs = [_run(stats, kw, bk.name, return_divergence=True) for kw in batches]
    counts, hist, sums = _expected_from_outputs(outs, batches, T, K)
    assert torch.equal(stats.counts.cpu(), counts)
    assert torch.equal(stats.hist.cpu(), hist)
    torch.testing.assert_close(stats.sums.cpu(), sums, rtol=1e-5, atol=1e-5)
    ids = torch.cat([kw["task_ids"].cpu() for kw in batches])
    assert torch.equal(stats.counts[:, S.COUNT_STEPS].cpu(), torch.bincount(ids, minlength=T))
    seen = torch.bincount(ids, minlength=T) > 0
    for view in (stats.tokens_per_step(), stats.mean_entropy()):
        assert view.shape == (T,) and view.dtype == torch.float64
        assert bool(view[~seen].isnan().all()) and not bool(view[seen & (stats.counts[:, 0].cpu() > 0)].isnan().any())
    u = stats.unfairness()
    assert math.isfinite(u["U_ce"]) and math.isfinite(u["U_kl"])


# --- statistical: realised acceptance converges to the expected acceptance -------------------

def test_realised_acceptance_converges_one_draft(cheap_backend):
    """K = 1: every draft is tested, so accepted/tested estimates the mean of alpha."""
    bk = cheap_backend
    N, V = 20_000, 12
    g = torch.Generator().manual_seed(5)
    target = torch.randn(N, 2, V, generator=g) * 1.5
    draft = target[:, :1] * 0.5 + torch.randn(N, 1, V, generator=g)
    tokens = torch.multinomial(torch.softmax(draft[:, 0], -1), 1, generator=g)
    stats = sk.TaskStats(1, 1, device=bk.device)
    out = sk.verify(target.to(bk.device), draft.to(bk.device), tokens.to(bk.device), stats=stats,
                    seed=torch.arange(N, device=bk.device), return_divergence=True, backend=bk.name)
    alpha = out.alpha.cpu().double()[:, 0]
    realised, expected = float(stats.acceptance_rate()[0]), float(stats.expected_acceptance()[0])
    assert expected == pytest.approx(float(alpha.mean()), rel=1e-6)
    se = math.sqrt(float((alpha * (1 - alpha)).sum())) / N
    assert abs(realised - expected) < 4.5 * se, (realised, expected, se)
    # Negative control: a drafter that ignored rejection would be "accepted" 100% of the time.
    assert abs(1.0 - expected) > 20 * se


def test_realised_acceptance_converges_identical_positions(cheap_backend):
    """K = 4 with the same p, q at every position: accepted/tested -> alpha, accepted/drafted does not."""
    bk = cheap_backend
    N, K, V = 8000, 4, 10
    g = torch.Generator().manual_seed(6)
    t_row = torch.randn(V, generator=g) * 1.5
    d_row = t_row * 0.5 + torch.randn(V, generator=g)
    target = t_row.expand(N, K + 1, V)
    draft = d_row.expand(N, K, V)
    tokens = torch.multinomial(torch.softmax(d_row, -1), N * K, replacement=True, generator=g).reshape(N, K)
    stats = sk.TaskStats(1, K, device=bk.device)
    sk.verify(target.to(bk.device), draft.to(bk.device), tokens.to(bk.device), stats=stats,
              seed=torch.arange(N, device=bk.device) + 7, backend=bk.name)
    alpha = float(torch.minimum(torch.softmax(t_row.double(), -1), torch.softmax(d_row.double(), -1)).sum())
    assert float(stats.expected_acceptance()[0]) == pytest.approx(alpha, rel=1e-5)
    tested = int(stats.counts[0, S.COUNT_TESTED])
    realised = float(stats.acceptance_rate()[0])
    se = math.sqrt(alpha * (1 - alpha) / tested)
    assert abs(realised - alpha) < 4.5 * se, (realised, alpha, se)
    survive = int(stats.counts[0, S.COUNT_ACCEPTED]) / int(stats.counts[0, S.COUNT_DRAFTED])
    assert abs(survive - alpha) > 20 * se  # the share of drafts that survive is a different quantity
    # The histogram agrees with the counters: tested = sum_n hist[n] * min(n + 1, K).
    hist = stats.hist[0].cpu()
    assert tested == sum(int(hist[n]) * min(n + 1, K) for n in range(K + 1))
    assert int(stats.counts[0, S.COUNT_ACCEPTED]) == sum(n * int(hist[n]) for n in range(K + 1))


# --- derived views -------------------------------------------------------------------------

def _filled(verify_case, T=4, K=3, empty=(1,), seed=30):
    stats = sk.TaskStats(T, K)
    kw = verify_case(seed, B=200, K=K, V=16, num_tasks=T, **{**CASE, "temps": (0.5, 1.0, 1.5)})
    ids = kw["task_ids"]
    for e in empty:
        ids[ids == e] = (e + 1) % T
    _run(stats, kw)
    return stats


def test_derived_views_match_their_formulas(verify_case):
    stats = _filled(verify_case)
    c, s = stats.counts.double(), stats.sums
    col = lambda i: c[:, i]  # noqa: E731

    def ratio(num, den):
        return torch.where(den > 0, num / den, torch.tensor(math.nan, dtype=torch.float64))

    views = {
        "acceptance_rate": ratio(col(S.COUNT_ACCEPTED), col(S.COUNT_TESTED)),
        "expected_acceptance": ratio(s[:, S.SUM_ALPHA], col(S.COUNT_DRAFTED)),
        "mean_kl": ratio(s[:, S.SUM_KL], col(S.COUNT_DRAFTED)),
        "mean_ce": ratio(s[:, S.SUM_CE], col(S.COUNT_DRAFTED)),
        "mean_entropy": ratio(s[:, S.SUM_ENTROPY], col(S.COUNT_DRAFTED)),
        "tokens_per_step": ratio(col(S.COUNT_EMITTED), col(S.COUNT_STEPS)),
    }
    for name, expected in views.items():
        got = getattr(stats, name)()
        assert got.dtype == torch.float64 and got.device.type == "cpu" and got.shape == (stats.num_tasks,)
        torch.testing.assert_close(got, expected, equal_nan=True, msg=name)
        assert math.isnan(float(got[1])), f"{name}: a task without rows must give NaN"
    # CE = KL + H per position, hence for the means.
    torch.testing.assert_close(views["mean_ce"], views["mean_kl"] + views["mean_entropy"], equal_nan=True)

    for c_ratio in (0.0, 0.1, 0.5):
        for gamma in (None, 2, 5):
            got = stats.expected_speedup(c_ratio, gamma)
            g = stats.max_draft if gamma is None else gamma
            for t in (0, 2, 3):
                a = float(views["expected_acceptance"][t])
                want = (1 - a ** (g + 1)) / ((1 - a) * (g * c_ratio + 1))
                assert float(got[t]) == pytest.approx(want, rel=1e-12)


def test_speedup_formula_edge_cases():
    g, c = 4, 0.2
    assert sk.speedup(1.0, g, c) == pytest.approx((g + 1) / (g * c + 1))
    assert sk.speedup(0.0, g, c) == pytest.approx(1 / (g * c + 1))
    assert sk.speedup(0.5, g, c) == pytest.approx((1 - 0.5 ** 5) / (0.5 * (g * c + 1)))
    a = torch.tensor([0.0, 0.5, 0.999999, 1.0, 1.0 + 1e-9])
    got = sk.speedup(a, g, c)
    want = [sk.speedup(float(x), g, c) for x in a.double()]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    assert sk.speedup(1.0, 0, 0.5) == 1.0  # no drafts: one token per step
    # alpha = 1 through TaskStats: every drafted position has alpha exactly 1.
    stats = sk.TaskStats(2, g)
    stats.counts[:, S.COUNT_DRAFTED] = 10
    stats.sums[:, S.SUM_ALPHA] = torch.tensor([10.0, 5.0])
    sp = stats.expected_speedup(c)
    assert float(sp[0]) == pytest.approx((g + 1) / (g * c + 1))
    assert float(sp[1]) == pytest.approx(sk.speedup(0.5, g, c))


def test_views_with_empty_tasks_are_nan_and_excluded_from_unfairness(verify_case):
    stats = _filled(verify_case, T=5, empty=(1, 4))
    have = [0, 2, 3]
    for name in ("acceptance_rate", "expected_acceptance", "mean_kl", "mean_ce", "mean_entropy", "tokens_per_step"):
        v = getattr(stats, name)()
        assert bool(v[[1, 4]].isnan().all()) and not bool(v[have].isnan().any()), name
    u = stats.unfairness()
    ce = stats.mean_ce()[have]
    assert u["U_ce"] == pytest.approx(float(ce.var(unbiased=False)), rel=1e-12)
    assert u["U_kl"] == pytest.approx(float(stats.mean_kl()[have].var(unbiased=False)), rel=1e-12)
    acc = stats.expected_acceptance()[have]
    assert u["acceptance_variance"] == pytest.approx(float(acc.var(unbiased=False)), rel=1e-12)
    assert u["acceptance_max_min_ratio"] == pytest.approx(float(acc.max() / acc.min()), rel=1e-12)
    real = stats.acceptance_rate()[have]
    assert u["realised_acceptance_variance"] == pytest.approx(float(real.var(unbiased=False)), rel=1e-12)
    assert u["realised_acceptance_max_min_ratio"] == pytest.approx(float(real.max() / real.min()), rel=1e-12)
    # The same numbers as an accumulator holding only the tasks with data.
    assert set(u) == {"U_ce", "U_kl", "acceptance_variance", "acceptance_max_min_ratio",
                      "realised_acceptance_variance", "realised_acceptance_max_min_ratio",
                      "speedup_variance", "speedup_max_min_ratio"}


def test_speedup_of_empty_tasks_is_nan_and_excluded(verify_case):
    stats = _filled(verify_case, T=5, empty=(1, 4))
    have = [0, 2, 3]
    sp = stats.expected_speedup(0.1)
    assert bool(sp[[1, 4]].isnan().all())
    u = stats.unfairness(0.1)
    assert u["speedup_variance"] == pytest.approx(float(sp[have].var(unbiased=False)), rel=1e-12)
    assert u["speedup_max_min_ratio"] == pytest.approx(float(sp[have].max() / sp[have].min()), rel=1e-12)


def test_single_task(verify_case):
    stats = sk.TaskStats(1, 3)
    _run(stats, verify_case(40, B=64, K=3, V=16, num_tasks=1, **CASE))
    u = stats.unfairness(0.2)
    assert u["U_ce"] == 0.0 and u["U_kl"] == 0.0 and u["acceptance_variance"] == 0.0
    assert u["acceptance_max_min_ratio"] == 1.0 and u["speedup_max_min_ratio"] == 1.0


def test_no_data_at_all():
    stats = sk.TaskStats(3, 2)
    u = stats.unfairness()
    assert all(math.isnan(v) for k, v in u.items() if not k.startswith("speedup")), u
    json.dumps(stats.to_dict(), allow_nan=True)


def test_to_dict_is_json_serialisable(verify_case):
    stats = _filled(verify_case, T=4, empty=(1,))
    d = stats.to_dict(cost_ratio=0.25)
    text = json.dumps(d, allow_nan=True)
    back = json.loads(text)
    assert back["num_tasks"] == 4 and back["max_draft"] == 3 and back["cost_ratio"] == 0.25
    per = back["per_task"]
    for name in S.COUNT_NAMES:
        assert per[name] == stats.counts[:, S.COUNT_NAMES.index(name)].tolist()
    assert per["accept_length_histogram"] == stats.hist.tolist()
    for name in ("acceptance_rate", "expected_acceptance", "mean_kl", "mean_ce", "mean_entropy", "tokens_per_step",
                 "expected_speedup"):
        assert len(per[name]) == 4, name
    assert math.isnan(per["mean_ce"][1])
    assert per["mean_ce"][0] == pytest.approx(float(stats.mean_ce()[0]))
    assert back["unfairness"]["U_ce"] == pytest.approx(stats.unfairness(0.25)["U_ce"])


# --- determinism and distribution -----------------------------------------------------------

def test_deterministic_sums_are_bitwise_reproducible(cheap_backend, verify_case):
    bk = cheap_backend
    T, K = 7, 3
    batches = [verify_case(50 + i, B=48, K=K, V=24, num_tasks=T, device=bk.device, **CASE) for i in range(3)]
    runs = []
    for _ in range(2):
        stats = sk.TaskStats(T, K, device=bk.device, deterministic=True)
        assert stats.deterministic
        for kw in batches:
            _run(stats, kw, bk.name)
        runs.append(stats)
    _assert_stats_equal(runs[0], runs[1], exact_sums=True)
    loose = sk.TaskStats(T, K, device=bk.device)
    for kw in batches:
        _run(loose, kw, bk.name)
    _assert_stats_equal(runs[0], loose)


def _allreduce_worker(rank, world, init_file, out_dir, batches):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        stats = sk.TaskStats(4, 3)
        _run(stats, batches[rank])
        before = stats.clone()
        assert stats.all_reduce() is stats
        torch.save({"before": (before.counts, before.hist, before.sums),
                    "after": (stats.counts, stats.hist, stats.sums)}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_reduce_over_two_gloo_processes(tmp_path, verify_case):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is unavailable")
    world = 2
    batches = [verify_case(60 + rank, B=16 + 8 * rank, K=3, V=16, num_tasks=4, **CASE) for rank in range(world)]
    mp.spawn(_allreduce_worker, args=(world, str(tmp_path / "store"), str(tmp_path), batches), nprocs=world, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for i in range(3):
        total = res[0]["before"][i] + res[1]["before"][i]
        for r in range(world):
            assert torch.equal(res[r]["after"][i], total)
    assert int(res[0]["after"][0][:, S.COUNT_STEPS].sum()) == 16 + 24


@pytest.mark.cuda
def test_cuda_stats_match_cpu(verify_case):
    """The GPU accumulator (Triton path) equals the CPU one."""
    T, K = 5, 3
    batches = [verify_case(70 + i, B=32, K=K, V=64, num_tasks=T, **CASE) for i in range(2)]
    cpu, gpu = sk.TaskStats(T, K), sk.TaskStats(T, K, device="cuda", deterministic=True)
    for kw in batches:
        _run(cpu, kw, "torch")
        _run(gpu, {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}, "auto")
    assert torch.equal(cpu.counts, gpu.counts.cpu())
    assert torch.equal(cpu.hist, gpu.hist.cpu())
    torch.testing.assert_close(cpu.sums, gpu.sums.cpu(), rtol=1e-5, atol=1e-5)
