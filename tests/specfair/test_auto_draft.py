"""`specfair.auto_draft`: when num_draft="auto" probes a task at K = 0, and the acceptance a
generator remembers from its earlier calls."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import nan_logits_at_forward, tiny_llama

import specfair_kernels as sk
from specfair import costs
from specfair.auto_draft import (
    PROBE_Z,
    AcceptanceHistory,
    acceptance_upper_bound,
    is_probe_step,
    is_refresh_step,
    probe_policy,
    probes_now,
)
from specfair.costs import clear_cost_cache
from specfair.generator import SpeculativeGenerator


def test_upper_bound_hand_values_and_order():
    z2 = PROBE_Z ** 2
    for n in (1, 3, 10, 100):   # no accepted draft: the bound is z^2 / (n + z^2)
        assert acceptance_upper_bound([0.0], [n])[0] == pytest.approx(z2 / (n + z2))
    assert acceptance_upper_bound([1.0], [5])[0] == pytest.approx(1.0)
    assert acceptance_upper_bound([float("nan"), 0.3], [0, 0]) == [1.0, 1.0]   # nothing known
    # p = 0.5, n = 100, z^2 = 2.706: (0.5 + 2.706/200 + 1.645 sqrt(0.25/100 + 2.706/40000)) / (1 + 2.706/100)
    # = (0.51353 + 0.08336) / 1.02706 = 0.58116
    assert acceptance_upper_bound([0.5], [100])[0] == pytest.approx(0.58116, abs=1e-5)
    bounds = acceptance_upper_bound([0.3] * 4, [5, 20, 80, 320])
    assert all(b > 0.3 for b in bounds) and bounds == sorted(bounds, reverse=True)   # shrinks towards p


@pytest.mark.parametrize("z,ok", [(PROBE_Z, True), (0.0, False)])
def test_upper_bound_covers_the_truth(z, ok):
    """Repeated binomial draws: the one-sided 95% bound lies at or above the true acceptance
    in >= 90% of them for every (alpha, n) of the grid.  Negative control: z = 0 (the
    estimate itself as its bound) covers about half the time and must fail."""
    rng = np.random.default_rng(0)
    worst = 1.0
    for alpha in (0.05, 0.2, 0.4, 0.6, 0.8):
        for n in (5, 20, 80):
            k = rng.binomial(n, alpha, size=3000)
            cover = np.mean(np.array(acceptance_upper_bound(k / n, [n] * len(k), z)) >= alpha)
            worst = min(worst, cover)
    assert (worst >= 0.90) == ok, worst


def test_probe_policy_and_schedule():
    assert probe_policy([0.0, 0.9], [100, 100], math.inf) == ["never", "never"]   # nothing pays
    assert probe_policy([0.0], [100], math.nan) == ["schedule"]
    # break-even 0.5, nothing accepted: 2 drafts leave room (bound 0.575), 3 do not (0.475)
    assert probe_policy([0.0, 0.0, float("nan")], [2, 3, 0], 0.5) == ["schedule", "refresh", "schedule"]
    assert [s for s in range(200) if is_probe_step(s)] == [7, 15, 31, 63, 127, 191]
    assert [s for s in range(200) if is_refresh_step(s)] == [63, 127, 191]
    assert probes_now(["schedule", "refresh", "never"], 7, 56) == [True, True, False]
    assert probes_now(["schedule", "refresh", "never"], 8, 10) == [False, False, False]


def test_history_adds_calls_and_grows_tasks():
    h = AcceptanceHistory()
    one = sk.TaskStats(1, 2)
    one.counts[0] = torch.tensor([4, 1, 5, 4, 0, 4])
    one.hist[0, 1] = 1
    assert h.combined(one) is one   # empty memory: the call's own counts
    h.add(one, 4)
    two = sk.TaskStats(2, 2)
    two.counts[1, sk.stats.COUNT_TESTED] = 3
    h.add(two, 3)
    assert h.steps == 7 and h.stats.num_tasks == 2 and h.stats.counts[0].tolist() == [4, 1, 5, 4, 0, 4]
    assert int(h.stats.counts[1, sk.stats.COUNT_TESTED]) == 3 and int(h.stats.hist[0, 1]) == 1
    call = sk.TaskStats(1, 2)
    call.counts[0, sk.stats.COUNT_ACCEPTED] = 2
    seen = h.combined(call)
    assert seen is not call and int(seen.counts[0, sk.stats.COUNT_ACCEPTED]) == 3
    assert int(call.counts[0, sk.stats.COUNT_ACCEPTED]) == 2   # the call's accumulator is untouched
    h.clear()
    assert h.stats is None and h.steps == 0


def _constant_drafter(drafter, token):
    """A forward hook that makes ``drafter`` propose ``token`` at every position."""
    def hook(module, args, out):
        logits = torch.full_like(out.logits, -10.0)
        logits[..., token] = 10.0
        out.logits = logits
        return out
    return drafter.register_forward_hook(hook)


def test_probes_stop_once_the_evidence_rules_speculation_out(monkeypatch, one_thread):
    """A drafter that is never right, costs with break-even 0.5 (c = 0.3, r_K = 1 + 0.2 K):
    a first call drafts at step 0 (the prior acceptance), then probes at steps 7 and 15; 3
    rejected drafts put the upper bound at 0.475 < 0.5, so step 31 is not probed.  A second
    call remembers that (and its 40 steps) and drafts only at its step 23, the 64th step
    remembered.  A call given its own ``stats`` does not read the memory and counts from its
    own first step, so replays from one accumulator agree; `forget` clears the memory.
    Every call's output is the verifier's greedy decoding."""
    d = tiny_llama(64, 1, hidden=16, layers=1, max_pos=128)
    v = tiny_llama(64, 2, hidden=32, layers=2, max_pos=128)
    ids = torch.randint(3, 64, (1, 6), generator=torch.Generator().manual_seed(1))
    N = 40
    want = v.generate(input_ids=ids, max_new_tokens=N, do_sample=False, eos_token_id=None, pad_token_id=0)
    never = next(t for t in range(64) if t not in want[0, 6:].tolist())   # a draft the verifier rejects
    clear_cost_cache()
    def fake(drafter, verifier, batch_size=1, max_draft=0, **kw):
        return {"cost_ratio": 0.3, "verify_cost": [1.0 + 0.2 * j for j in range(max_draft + 1)],
                "measured_widths": list(range(1, max_draft + 2))}
    monkeypatch.setattr(costs, "measure_costs", fake)
    gen = SpeculativeGenerator(d, v, num_draft="auto", max_draft=4, temperature=0)
    hook = _constant_drafter(d, never)
    try:
        drafted = []
        for stats in (None, None, sk.TaskStats(1, 4), "forget"):
            if stats == "forget":
                gen.forget()
                stats = None
            out = gen.generate(ids, max_new_tokens=N, eos_token_id=[], seed=0, stats=stats)
            assert torch.equal(out.sequences, want)
            assert int(out.stats.counts[0, sk.stats.COUNT_ACCEPTED]) == 0
            drafted.append(int(out.stats.counts[0, sk.stats.COUNT_DRAFTED]))
        # Replays from one accumulator make the same choices (measure_speedup's repeats): the
        # refresh probe comes at step 63 of each, however many calls came before.
        start = gen.history.stats.clone()   # 3 rejected drafts: refresh mode from the first step
        replays = [gen.generate(ids, max_new_tokens=70, eos_token_id=[], seed=0, stats=start.clone()).stats
                   for _ in range(3)]
    finally:
        hook.remove()
    assert all(torch.equal(r.counts, replays[0].counts) for r in replays)
    assert int(replays[0].counts[0, sk.stats.COUNT_DRAFTED] - start.counts[0, sk.stats.COUNT_DRAFTED]) == 1
    # calls 3 (its own stats) and 4 (memory cleared): steps 0, 7, 15, like call 1; their
    # refresh would come at step 63.
    assert drafted == [3, 1, 3, 3]
    assert int(gen.history.stats.counts[0, sk.stats.COUNT_DRAFTED]) == 3   # call 4 only (call 3 had stats)


@pytest.mark.parametrize("auto", [True, False])
def test_invalid_logits_raise_and_every_step_is_counted(auto, monkeypatch, one_thread):
    """A verifier whose logits turn NaN for row 1 at step 3: generate raises naming the row,
    and the caller's TaskStats holds what `verify` would have counted.  Auto at K = 0 counts
    its steps without drafts only at the end of a call (`DecodeState.add_uncounted`), fixed
    K = 2 through `verify` at every step: the step counts and the invalid row agree."""
    d = tiny_llama(64, 1, hidden=16, layers=1, max_pos=128)
    v = tiny_llama(64, 2, hidden=32, layers=2, max_pos=128)
    ids = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(1))
    clear_cost_cache()
    monkeypatch.setattr(costs, "measure_costs", lambda drafter, verifier, batch_size=1, max_draft=0, **kw: {
        "cost_ratio": 0.9, "verify_cost": [1.0 + j for j in range(max_draft + 1)],
        "measured_widths": list(range(1, max_draft + 2))})   # no K pays: auto never drafts
    gen = SpeculativeGenerator(d, v, num_draft="auto" if auto else 2, max_draft=4, temperature=0)
    stats = sk.TaskStats(2, 4)
    # steps 0 (which reads the prompt too), 1, 2; step 3 is the 4th forward
    with nan_logits_at_forward(v, 4), pytest.raises(RuntimeError, match=r"rows \[1\] at step 3"):
        gen.generate(ids, max_new_tokens=16, eos_token_id=[], seed=0, task_ids=[0, 1], stats=stats)
    S = sk.stats
    steps = stats.counts[:, S.COUNT_STEPS].tolist()
    assert steps == [4, 3] and stats.counts[:, S.COUNT_INVALID].tolist() == [0, 1]
    assert int(stats.hist[:, :].sum()) == sum(steps)
    if auto:
        assert stats.counts[:, S.COUNT_EMITTED].tolist() == steps and stats.hist[:, 0].tolist() == steps
