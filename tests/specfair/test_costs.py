"""`specfair.costs`: the break-even acceptance, and the cost calibration behind num_draft="auto"."""
from __future__ import annotations

import math

import numpy as np
import pytest

from specfair.costs import break_even_acceptance, expected_tokens, speedup_with_verify_cost


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
