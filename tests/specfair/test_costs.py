"""`specfair.costs`: the break-even acceptance, and the cost calibration behind num_draft="auto"."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import tiny_llama

import specfair_kernels as sk
from specfair import costs
from specfair.costs import (
    AUTO_PRIOR_ACCEPTANCE,
    break_even_acceptance,
    calibration_widths,
    choose_num_draft,
    clear_cost_cache,
    expected_tokens,
    measure_costs,
    speedup_with_verify_cost,
)
from specfair.generator import SpeculativeGenerator


def test_break_even_hand_computed():
    # K = 1: 1 + a = c + r_1  ->  a = c + r_1 - 1
    assert break_even_acceptance(1, 0.25, 1.25) == pytest.approx(0.5, abs=1e-10)
    assert break_even_acceptance(1, 0.3, 1.0) == pytest.approx(0.3, abs=1e-10)
    # K = 2, c = 0.5, r = 1: 1 + a + a^2 = 2  ->  a = (sqrt 5 - 1) / 2
    assert break_even_acceptance(2, 0.5, 1.0) == pytest.approx((math.sqrt(5) - 1) / 2, abs=1e-10)
    # K = 3, c = 1/3, r = 5/3 -> 1 + a + a^2 + a^3 = 8/3; a = 2/3 gives 1 + 2/3 + 4/9 + 8/27 = 65/27 < 72/27
    a = break_even_acceptance(3, 1 / 3, 5 / 3)
    assert 2 / 3 < a < 1 and expected_tokens(a, 3) == pytest.approx(8 / 3, rel=1e-10)
    assert speedup_with_verify_cost(a, 3, 1 / 3, 5 / 3) == pytest.approx(1.0, rel=1e-10)


def test_break_even_edges():
    assert break_even_acceptance(4, 0.0, 1.0) == 0.0            # free drafts: any acceptance pays
    assert break_even_acceptance(4, 0.0, 0.9) == 0.0
    assert break_even_acceptance(2, 1.0, 1.5) == math.inf        # 3.5 steps for at most 3 tokens
    assert break_even_acceptance(1, 1.0, 1.0) == 1.0             # exactly alpha = 1
    # the shipped CPU 1.5B figures of issue 16: c ~ 0.44, r_2 ~ 2.9 -> 3.8 > 3 tokens
    assert break_even_acceptance(2, 0.44, 2.9) == math.inf
    assert math.isnan(break_even_acceptance(2, math.nan, 1.0))
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="num_draft"):
            break_even_acceptance(bad, 0.1, 1.0)
    with pytest.raises(ValueError, match="cost_ratio"):
        break_even_acceptance(2, -0.1, 1.0)
    with pytest.raises(ValueError, match="verify_cost"):
        break_even_acceptance(2, 0.1, "1")


def test_break_even_is_monotone_and_separates_paying_from_losing():
    rng = np.random.default_rng(0)
    for K in (1, 2, 4, 8):
        cs = np.linspace(0.0, 0.5, 11)
        evens = [break_even_acceptance(K, float(c), 1.2) for c in cs]
        assert all(x <= y for x, y in zip(evens, evens[1:]))    # dearer drafts need more acceptance
        rs = np.linspace(1.0, 3.0, 11)
        evens = [break_even_acceptance(K, 0.1, float(r)) for r in rs]
        assert all(x <= y for x, y in zip(evens, evens[1:]))
        for _ in range(20):
            c, r = float(rng.uniform(0, 0.6)), float(rng.uniform(1, 3))
            e = break_even_acceptance(K, c, r)
            if 0 < e < 1:
                assert speedup_with_verify_cost(e - 1e-3, K, c, r) < 1 < speedup_with_verify_cost(e + 1e-3, K, c, r)
            elif e == math.inf:
                assert speedup_with_verify_cost(1.0, K, c, r) < 1


# --- calibration for num_draft="auto" ----------------------------------------------------------

@pytest.fixture(scope="module")
def pair():
    d = tiny_llama(64, 1, hidden=16, layers=1, max_pos=128)
    v = tiny_llama(64, 2, hidden=32, layers=2, max_pos=128)
    return d, v


def _counting(monkeypatch):
    """Count the forwards `measure_costs` times (all of them go through costs._time_forward)."""
    calls = []
    real = costs._time_forward

    def counted(device, fn):
        calls.append(1)
        return real(device, fn)

    monkeypatch.setattr(costs, "_time_forward", counted)
    return calls


def test_calibration_widths_and_rounds(pair, monkeypatch, one_thread):
    assert calibration_widths(1) == [1, 2] and calibration_widths(3) == [1, 2, 3, 4]
    assert calibration_widths(8) == [1, 2, 3, 4, 5, 9] and calibration_widths(4) == [1, 2, 3, 4, 5]
    assert calibration_widths(12) == [1, 2, 3, 4, 5, 7, 13]
    d, v = pair
    calls = _counting(monkeypatch)
    m = measure_costs(d, v, batch_size=2, max_draft=8, context=8, repeats=2, budget_s=0.0)
    # a one-token forward of each model, then round-robin: (repeats + 1) rounds (the first a
    # warm-up) of the drafter and 6 verifier widths
    assert len(calls) == 2 + 3 * (1 + 6) and m["measured_widths"] == [1, 2, 3, 4, 5, 9] and m["repeats"] == 2
    r = m["verify_cost"]
    assert len(r) == 9 and r[0] == 1.0 and all(x > 0 for x in r)
    # widths 6..8 (K = 5..7) lie on the line through widths 5 and 9
    for k in (5, 6, 7):
        assert r[k] - r[k - 1] == pytest.approx((r[8] - r[4]) / 4, rel=1e-9, abs=1e-12)
    calls.clear()
    full = measure_costs(d, v, batch_size=1, max_draft=3, context=8, repeats=1, widths=[2], budget_s=0.0)
    assert full["measured_widths"] == [1, 2, 4] and len(calls) == 2 + 2 * 4   # 1 and K_max + 1 always timed
    # a time budget adds rounds (cheap models), up to max_repeats
    calls.clear()
    more = measure_costs(d, v, max_draft=1, context=8, repeats=1, budget_s=60.0, max_repeats=5)
    assert more["repeats"] == 5 and len(calls) == 2 + 6 * 3
    # a slow model (a round estimated over slow_round_s): its first one-token forwards, then the
    # verifier at 2 tokens and at K_max + 1, over a one-token context; the widths between interpolated
    calls.clear()
    slow = measure_costs(d, v, max_draft=8, context=8, slow_round_s=0.0)
    assert slow["measured_widths"] == [1, 2, 9] and slow["repeats"] == 1 and len(calls) == 2 + 2
    assert slow["context"] == 1 and m["context"] == 8
    r = slow["verify_cost"]
    for k in range(2, 8):
        assert r[k] - r[k - 1] == pytest.approx((r[8] - r[1]) / 7, rel=1e-9, abs=1e-12)
    for bad in ({"repeats": 0}, {"widths": [0]}, {"widths": [5]}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            measure_costs(d, v, max_draft=3, context=8, **bad)


def test_auto_generators_of_one_pair_share_one_calibration(pair, monkeypatch, one_thread):
    d, v = pair
    clear_cost_cache()
    measured = []
    real = costs.measure_costs

    def counted(*a, **k):
        measured.append(a[2:4])
        return real(*a, **k)

    monkeypatch.setattr(costs, "measure_costs", counted)
    ids = torch.randint(3, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    g1 = SpeculativeGenerator(d, v, num_draft="auto", max_draft=4, temperature=0)
    g1.generate(ids, max_new_tokens=4, eos_token_id=[], seed=0)
    assert measured == [(2, 4)]
    g2 = SpeculativeGenerator(d, v, num_draft="auto", max_draft=4, temperature=0)
    g2.generate(ids, max_new_tokens=4, eos_token_id=[], seed=0)
    assert measured == [(2, 4)] and g2.costs[2] is g1.costs[2]      # the second generator did not time
    g2.generate(ids[:1], max_new_tokens=4, eos_token_id=[], seed=0)  # another batch size is measured
    assert measured == [(2, 4), (1, 4)]
    other = tiny_llama(64, 2, hidden=32, layers=2, max_pos=128)      # equal weights, another object
    SpeculativeGenerator(d, other, num_draft="auto", max_draft=4, temperature=0).cost_ratio(1)
    assert measured == [(2, 4), (1, 4), (1, 4)]
    SpeculativeGenerator(d, v, num_draft="auto", max_draft=6, temperature=0).cost_ratio(1)   # another K_max
    assert measured[-1] == (1, 6)
    clear_cost_cache()
    SpeculativeGenerator(d, v, num_draft="auto", max_draft=4, temperature=0).cost_ratio(2)
    assert measured[-1] == (2, 4) and len(measured) == 5


def _fake_costs(c, r):
    def fake(drafter, verifier, batch_size=1, max_draft=0, context=32, repeats=3, widths=None):
        return {"cost_ratio": c, "verify_cost": [1.0] + [r(k) for k in range(1, max_draft + 1)],
                "verifier_step_s": 1.0, "drafter_step_s": c, "batch_size": batch_size}
    return fake


def test_auto_k_is_choose_num_draft_on_the_measured_costs(pair, monkeypatch, one_thread):
    d, v = pair
    ids = torch.randint(3, 64, (1, 6), generator=torch.Generator().manual_seed(1))
    # Costs that force the ends: free drafts and a flat verifier -> K_max; dear drafts and a
    # verifier that pays per token -> K = 1 if it pays at the prior acceptance, else K = 0.
    # The generator must follow the measured costs.
    for c, r, want in ((0.0, lambda k: 1.0, 5), (0.3, lambda k: 1.0 + 0.2 * k, 1), (0.9, lambda k: 1.0 + k, 0)):
        clear_cost_cache()
        monkeypatch.setattr(costs, "measure_costs", _fake_costs(c, r))
        gen = SpeculativeGenerator(d, v, num_draft="auto", max_draft=5, temperature=0)
        out = gen.generate(ids, max_new_tokens=1, eos_token_id=[], seed=0)
        assert out.num_draft == [want]
    monkeypatch.undo()
    clear_cost_cache()
    gen = SpeculativeGenerator(d, v, num_draft="auto", max_draft=5, temperature=0)
    stats = sk.TaskStats(1, 5)
    gen.generate(ids, max_new_tokens=12, eos_token_id=[], seed=0, stats=stats)   # measures, builds history
    # greedy: the realised rate (accepted / tested drafts) is the acceptance that sets the speed
    want = choose_num_draft(stats.acceptance_rate(), gen.costs[1]["cost_ratio"], 5, gen.costs[1]["verify_cost"],
                            min_draft=0)
    out = gen.generate(ids, max_new_tokens=1, eos_token_id=[], seed=0, stats=stats)   # one step, K chosen first
    assert out.num_draft == want


def test_auto_reads_the_acceptance_of_its_drafting(pair):
    """Sampled drafts at a temperature > 0 verified token by token: the expected acceptance;
    greedy rows, argmax drafts and block verification: the realised accepted / tested rate
    (a greedy row's expected acceptance is the untempered softmax's, not what it accepts)."""
    from specfair.ngram import NgramConfig

    d, v = pair
    stats = sk.TaskStats(2, 4)
    S = sk.stats
    stats.counts[:, S.COUNT_DRAFTED] = torch.tensor([10, 0])
    stats.counts[:, S.COUNT_TESTED] = torch.tensor([8, 0])
    stats.counts[:, S.COUNT_ACCEPTED] = torch.tensor([2, 0])
    stats.sums[0, S.SUM_ALPHA] = 7.0                     # expected 0.7 vs realised 0.25
    expected, realised = [0.7, math.nan], [0.25, math.nan]
    cases = [({"temperature": 1.0}, expected), ({"temperature": 0.0}, realised),
             ({"temperature": 1.0, "draft": "argmax"}, realised),
             ({"temperature": 1.0, "verify_method": "block"}, realised)]
    for kw, want in cases:
        got = SpeculativeGenerator(d, v, num_draft="auto", **kw).acceptance(stats).tolist()
        assert got[0] == pytest.approx(want[0]) and math.isnan(got[1]), kw
    ngram = SpeculativeGenerator(None, v, num_draft=2, temperature=1.0, ngram=NgramConfig())
    assert ngram.acceptance(stats)[0].item() == pytest.approx(0.25)
    # where the two differ across the break-even acceptance (K = 1: c + r_1 - 1 = 0.5), the choice follows
    assert choose_num_draft([0.7], 0.3, 1, [1.0, 1.2], min_draft=0) == [1]
    assert choose_num_draft([0.25], 0.3, 1, [1.0, 1.2], min_draft=0) == [0]


def test_auto_falls_back_to_the_verifier_alone_where_no_k_pays(pair, monkeypatch, one_thread):
    """Measured costs under which no K pays even at acceptance 1 (r_K = 1 + K, c = 0.9): auto
    decodes with the verifier alone, exactly (greedy = Hugging Face's), and never drafts, not
    even a probe (`specfair.auto_draft`), so the drafter never runs; a given cost_ratio
    (PAPER.md's model) never falls back."""
    d, v = pair
    ids = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(1))
    assert choose_num_draft([0.5, 0.99], 0.9, 4, [1.0 + k for k in range(5)], min_draft=0) == [0, 0]
    assert choose_num_draft([0.5], 0.01, 4, [1.0] * 5, min_draft=0) == choose_num_draft([0.5], 0.01, 4, [1.0] * 5)
    assert costs.min_break_even(0.9, [1.0 + k for k in range(5)], 4) == math.inf
    clear_cost_cache()
    monkeypatch.setattr(costs, "measure_costs", _fake_costs(0.9, lambda k: 1.0 + k))
    gen = SpeculativeGenerator(d, v, num_draft="auto", max_draft=4, temperature=0)
    calls = []
    hook = d.register_forward_hook(lambda *a: calls.append(1))
    try:
        out = gen.generate(ids, max_new_tokens=80, eos_token_id=[], seed=0)   # past the refresh step 63 too
    finally:
        hook.remove()
    want = v.generate(input_ids=ids, max_new_tokens=80, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(out.sequences, want)
    assert int(out.stats.counts[0, sk.stats.COUNT_DRAFTED]) == 0 and out.steps == 80 and calls == []
    assert int(out.stats.counts[0, sk.stats.COUNT_STEPS]) == int(out.row_steps.sum())   # K = 0 steps count too
    fixed_c = SpeculativeGenerator(d, v, num_draft="auto", max_draft=4, temperature=0, cost_ratio=0.9)
    assert fixed_c.generate(ids, max_new_tokens=4, eos_token_id=[], seed=0).num_draft == [1]


def test_choose_num_draft_matches_the_scalar_model():
    rng = np.random.default_rng(3)
    for _ in range(50):
        c, K = float(rng.uniform(0, 0.8)), int(rng.integers(1, 10))
        r = [1.0] + sorted(rng.uniform(1, 3, K).tolist())
        alphas = rng.uniform(0, 1, 4).tolist() + [float("nan"), 1.0, 0.0]
        got = choose_num_draft(alphas, c, K, r)
        for a, k in zip(alphas, got):
            a = AUTO_PRIOR_ACCEPTANCE if math.isnan(a) else a
            gains = [speedup_with_verify_cost(a, j, c, r[j]) for j in range(1, K + 1)]
            assert k == 1 + int(np.argmax(gains))
    assert choose_num_draft([], 0.1, 4) == []


def test_cheapest_widths_pads_only_into_measured_cheaper_widths():
    from specfair.costs import cheapest_widths

    r = [1.0, 1.3, 1.5, 1.2, 1.4, 1.6, 1.8]          # widths 1..7: 4 tokens cost less than 2 or 3
    widths, cost = cheapest_widths(r, [1, 2, 3, 4, 5, 7])
    assert widths == [1, 4, 4, 4, 5, 6, 7] and cost == [1.0, 1.2, 1.2, 1.2, 1.4, 1.6, 1.8]
    # width 4 interpolated (not measured) is never padded into: K = 2 pads to the measured 5
    assert cheapest_widths(r, [1, 2, 3, 5, 7])[0] == [1, 2, 5, 4, 5, 6, 7]
    # within the 5% margin it is noise, no padding (1.5 -> 1.44 is 4% cheaper); past it, padding
    assert cheapest_widths([1.0, 1.3, 1.5, 1.44], [1, 2, 3, 4])[0] == [1, 2, 3, 4]
    assert cheapest_widths([1.0, 1.3, 1.5, 1.44], [1, 2, 3, 4], min_gain=0.03)[0] == [1, 2, 4, 4]
