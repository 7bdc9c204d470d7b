"""The two-level exponential race (`reference.race`): an exact sampler, and every backend's
tokens follow it at vocabularies that span several race groups."""
from __future__ import annotations

import pytest
import torch
from scipy import stats as st

import specfair_kernels as sk
from specfair_kernels import reference, rng


def _weights(V: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(V, generator=g) ** 3
    w[[3, V // 2, V - 1]] = 0.0  # zero weights in the first, a middle and the partial last group
    return w


def _race(w: torch.Tensor, n: int, seed0: int) -> torch.Tensor:
    seeds = torch.arange(n, dtype=torch.int64) * 7919 + seed0
    zeros = torch.zeros(n, dtype=torch.int64)
    return reference.race(w.expand(n, -1), seeds, zeros, zeros)


def _chisq_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    live = probs > 0
    return float(st.chisquare(counts[live].numpy(), (probs[live] * counts.sum()).numpy()).pvalue)


def test_race_samples_normalised_weights():
    V, n = 100, 200_000  # 4 groups of RACE_GROUP = 32, the last one partial
    assert -(-V // rng.RACE_GROUP) == 4 and V % rng.RACE_GROUP
    w = _weights(V)
    counts = torch.bincount(_race(w, n, 12345), minlength=V).double()
    p = w.double() / w.double().sum()
    assert counts[p == 0].sum() == 0, "a zero weight won the race"
    assert _chisq_p(counts, p) > 1e-4
    # Negative control: the same draws against weights with one group off by 10% fail.
    q = w.double()
    q[32:64] *= 1.1
    assert _chisq_p(counts, q / q.sum()) < 1e-6


def test_race_uses_both_levels_of_random_words():
    """The token depends on the group words and, within the group, on the entry words."""
    V, n = 64, 2000
    w = torch.ones(V)
    seeds = torch.arange(n, dtype=torch.int64)
    zeros = torch.zeros(n, dtype=torch.int64)
    tok = reference.race(w.expand(n, -1), seeds, zeros, zeros)
    groups = torch.bincount(tok // rng.RACE_GROUP, minlength=2)
    entries = torch.bincount(tok % rng.RACE_GROUP, minlength=rng.RACE_GROUP)
    assert (groups > 0.4 * n).all() and (entries > 0).all()
    # Another step (counter word 2) changes the draws; the same key and counters repeat them.
    assert not torch.equal(tok, reference.race(w.expand(n, -1), seeds, zeros, zeros + 1))
    assert torch.equal(tok, reference.race(w.expand(n, -1), seeds, zeros, zeros))


def test_emitted_tokens_follow_target_across_groups(cheap_backend):
    """Lossless at V = 100: residual races (rejections) and bonus races span four groups."""
    V, K, n = 100, 2, 60_000
    g = torch.Generator().manual_seed(4)
    target = torch.randn(K + 1, V, generator=g) * 1.5
    draft = target[:K] + torch.randn(K, V, generator=g)
    target[:, 7] = float("-inf")  # a masked entry: never emitted
    q = torch.softmax(draft, -1)
    drafts = torch.stack([torch.multinomial(q[j], n, replacement=True, generator=g) for j in range(K)], 1)
    dev = cheap_backend.device
    out = sk.verify(target.expand(n, -1, -1).to(dev), draft.expand(n, -1, -1).to(dev), drafts.to(dev),
                    seed=torch.arange(n, device=dev) + 777, backend=cheap_backend.name)
    p = torch.softmax(target.double(), -1)
    tokens, emitted = out.tokens.cpu(), out.num_emitted.cpu()
    for j in range(K + 1):
        sel = emitted > j
        counts = torch.bincount(tokens[sel, j], minlength=V).double()
        assert counts[7] == 0
        assert _chisq_p(counts, p[j]) > 1e-4, f"position {j}"
    rejected = (out.num_accepted.cpu() < K).sum()
    assert 0.2 * n < rejected < 0.9 * n  # both races are exercised


@pytest.mark.parametrize("one_hot", [False, True])
def test_residual_race_only_differs_from_the_bonus_race_where_q_has_mass(one_hot):
    """reference.verify_ref: after a rejection the race runs on max(0, p - q): the drafted
    token (one-hot drafts) or entries with q >= p never win."""
    B, K, V = 2000, 1, 70
    g = torch.Generator().manual_seed(9)
    target = torch.randn(B, K + 1, V, generator=g)
    draft = None if one_hot else target[:, :K] + torch.randn(B, K, V, generator=g)
    x = torch.randint(0, V, (B, K), generator=g)
    out = sk.verify(target, draft, x, seed=torch.arange(B), backend="torch")
    rej = out.num_accepted == 0
    assert rej.sum() > 100
    tok = out.tokens[rej, 0]
    p = torch.softmax(target[rej, 0], -1)
    q = torch.nn.functional.one_hot(x[rej, 0], V).float() if one_hot else torch.softmax(draft[rej, 0], -1)
    assert (p.gather(1, tok[:, None]) > q.gather(1, tok[:, None])).all()
