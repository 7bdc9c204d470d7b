"""Statistical proof that `verify` is lossless, plus its determinism contract.

Every statistical test uses fixed seeds, so it is deterministic: the thresholds
(chi-square / binomial p-value > 1e-3, |z| < 4.5) are those a correct implementation
would fail with probability <= 1e-3 under fresh randomness, and each comes with a
negative control computed from the same data that must fail (p < 1e-6).

Many rows go through ONE verify call: the same logits are replicated across the batch
and every row gets its own seed, so the rows are independent trials.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from scipy import stats as sps

import specfair_kernels as sk
from specfair_kernels.stats import DIVERGENCE_FIELDS

N = 24_000  # rows per statistical call
P_MIN = 1e-3  # a correct implementation fails a chi-square test with this probability
P_CONTROL = 1e-6  # a negative control must be rejected this strongly
Z_MAX = 4.5


# --- helpers -------------------------------------------------------------------------------

def _randn(seed: int, *shape, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def _softmax64(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits.double() / temperature, -1)


def _sample(probs: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """probs [K, V] -> [n, K] int64, column j drawn i.i.d. from probs[j] (torch.multinomial)."""
    g = torch.Generator().manual_seed(seed)
    cols = [torch.multinomial(probs[j].float(), n, replacement=True, generator=g) for j in range(probs.shape[0])]
    return torch.stack(cols, 1) if cols else torch.zeros(n, 0, dtype=torch.int64)


def _verify_rows(bk, target, draft, tokens, temperature=1.0, seed0=0, step=0, num_draft=None, **kw):
    """Replicate target [K+1, V] / draft [K, V] across the rows of `tokens` [n, K]; seeds seed0+row."""
    n = tokens.shape[0]
    dev = bk.device
    t = target.to(dev).unsqueeze(0).expand(n, -1, -1)
    d = None if draft is None else draft.to(dev).unsqueeze(0).expand(n, -1, -1)
    seeds = torch.arange(n, dtype=torch.int64, device=dev) + seed0
    if isinstance(num_draft, torch.Tensor):
        num_draft = num_draft.to(dev)
    out = sk.verify(t, d, tokens.to(dev), num_draft=num_draft, temperature=temperature, seed=seeds,
                    step=step, backend=bk.name, **kw)
    return _cpu(out)


def _cpu(out):
    for f in ("tokens", "num_accepted", "num_emitted", *DIVERGENCE_FIELDS):
        v = getattr(out, f)
        if v is not None:
            setattr(out, f, v.cpu())
    return out


def _chisq_p(samples: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-square goodness of fit of integer samples in [0, V) to probs [V].

    Bins with an expected count below 5 are pooled into one bin (the usual validity rule)."""
    V = probs.numel()
    assert samples.numel() > 0
    assert int(samples.min()) >= 0 and int(samples.max()) < V
    obs = torch.bincount(samples, minlength=V).double()
    probs = probs.double() / probs.double().sum()
    exp = probs * samples.numel()
    support = exp > 0
    assert float(obs[~support].sum()) == 0, "sample outside the support of the expected distribution"
    obs, exp = obs[support], exp[support]
    small = exp < 5
    if bool(small.any()):
        obs = torch.cat([obs[~small], obs[small].sum().reshape(1)])
        exp = torch.cat([exp[~small], exp[small].sum().reshape(1)])
    assert obs.numel() >= 2, "test design: need at least two bins"
    return float(sps.chisquare(obs.numpy(), exp.numpy()).pvalue)


def _z(successes: int, trials: int, prob: float) -> float:
    return (successes - trials * prob) / math.sqrt(trials * prob * (1 - prob))


def _case(seed: int, K: int, V: int, temperature: float):
    """Target logits [K+1, V], draft logits [K, V], p [K+1, V], q [K, V] at `temperature`."""
    target = _randn(seed, K + 1, V)
    draft = target[:K] * 0.3 + _randn(seed + 1, K, V, scale=1.2)  # correlated but clearly different
    return target, draft, _softmax64(target, temperature), _softmax64(draft, temperature)


# --- the emitted tokens are distributed as the verifier alone --------------------------------

_RUNS: dict = {}


def _dense_run(bk, temperature):
    """One big verify call per (backend, temperature), shared by the tests below."""
    key = (bk.name, bk.device, temperature)
    if key not in _RUNS:
        K, V = 3, 8
        target, draft, p, q = _case(100 + int(temperature * 10), K, V, temperature)
        drafts = _sample(q, N, seed=7)
        out = _verify_rows(bk, target, draft, drafts, temperature, seed0=10_000, step=5)
        _RUNS[key] = (out, drafts, p, q)
    return _RUNS[key]


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.5])
def test_emitted_tokens_follow_target(cheap_backend, temperature):
    out, drafts, p, q = _dense_run(cheap_backend, temperature)
    K = drafts.shape[1]
    assert bool((out.num_emitted == out.num_accepted + 1).all())
    tv = 0.5 * float((p[0] - q[0]).abs().sum())
    assert tv > 0.1, "test design: drafter and verifier must differ"

    # First emitted token ~ p_0.
    first = out.tokens[:, 0]
    assert _chisq_p(first, p[0]) > P_MIN

    # Position j, over rows that emitted > j tokens (all earlier drafts accepted), ~ p_j;
    # j = K is the bonus token after all K drafts were accepted.
    for j in range(1, K + 1):
        rows = out.num_emitted > j
        assert int(rows.sum()) > 2000, "test design: too few rows reach this position"
        assert _chisq_p(out.tokens[rows, j], p[j]) > P_MIN, f"position {j}"

    # Negative control 1: emitting the draft itself (accept everything) gives q_0, not p_0.
    assert _chisq_p(drafts[:, 0], p[0]) < P_CONTROL
    # Negative control 2: accept as verify did, but on rejection resample from p_0 instead
    # of the residual normalise(max(0, p_0 - q_0)).
    naive = torch.where(out.num_accepted >= 1, drafts[:, 0], _sample(p[:1], N, seed=8)[:, 0])
    assert _chisq_p(naive, p[0]) < P_CONTROL


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_emitted_tokens_follow_target_one_hot_ragged(cheap_backend, temperature):
    """One-hot drafts (draft_logits=None) drawn from an unrelated distribution r, ragged num_draft."""
    K, V = 3, 10
    peaks = torch.tensor([2, 5, 7, 1])
    target = _randn(31, K + 1, V)
    target[torch.arange(K + 1), peaks] += 3.0
    p = _softmax64(target, temperature)
    r_logits = _randn(32, K, V, scale=0.8)
    r_logits[torch.arange(K), peaks[:K]] += 3.5  # same mode as p, otherwise unrelated
    r = _softmax64(r_logits, 1.0)
    drafts = _sample(r, N, seed=9)
    g = torch.Generator().manual_seed(33)
    num_draft = torch.randint(0, K + 1, (N,), generator=g)
    pos = torch.arange(K)
    drafts = torch.where(pos[None, :] < num_draft[:, None], drafts, -1)  # padded positions hold -1
    out = _verify_rows(cheap_backend, target, None, drafts, temperature, seed0=-5_000, num_draft=num_draft)
    assert bool((out.num_emitted == out.num_accepted + 1).all())
    assert bool((out.num_accepted <= num_draft).all())

    assert _chisq_p(out.tokens[:, 0], p[0]) > P_MIN
    for j in range(1, K + 1):
        rows = out.num_emitted > j
        assert int(rows.sum()) > 300, "test design: too few rows reach this position"
        assert _chisq_p(out.tokens[rows, j], p[j]) > P_MIN, f"position {j}"

    # Acceptance with a one-hot drafter: P(accept x_j) = sum_x r_j(x) p_j(x).
    for j in range(K):
        reached = (out.num_accepted >= j) & (num_draft > j)
        acc = int((out.num_accepted[reached] > j).sum())
        assert abs(_z(acc, int(reached.sum()), float((r[j] * p[j]).sum()))) < Z_MAX, f"position {j}"

    # Negative control: the drafts themselves (rows with >= 1 draft) follow r, not p.
    assert _chisq_p(drafts[num_draft > 0, 0], p[0]) < P_CONTROL


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.5])
def test_draft_equal_to_target_accepts_everything(cheap_backend, dtype, temperature):
    K, V, n = 4, 16, 4096
    target = _randn(41, K + 1, V, scale=1.5).to(dtype)
    draft = target[:K].clone()
    drafts = _sample(_softmax64(target[:K].float(), temperature), n, seed=42)
    out = _verify_rows(cheap_backend, target, draft, drafts, temperature, seed0=1)
    assert bool((out.num_accepted == K).all())
    assert bool((out.num_emitted == K + 1).all())
    assert torch.equal(out.tokens[:, :K], drafts)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.5])
def test_acceptance_per_position_and_histogram(cheap_backend, temperature):
    out, drafts, p, q = _dense_run(cheap_backend, temperature)
    K = drafts.shape[1]
    alpha = torch.minimum(p[:K], q).sum(-1)  # [K] float64
    n_acc = out.num_accepted.long()

    for j in range(K):
        reached = n_acc >= j
        acc = int((n_acc[reached] > j).sum())
        z = _z(acc, int(reached.sum()), float(alpha[j]))
        assert abs(z) < Z_MAX, f"position {j}: z = {z:.2f}"

    # P(n accepted) = prod_{i<n} alpha_i * (1 - alpha_n); the last bin is prod of all alpha.
    probs = torch.empty(K + 1, dtype=torch.float64)
    run = 1.0
    for n in range(K):
        probs[n] = run * (1 - alpha[n])
        run *= float(alpha[n])
    probs[K] = run
    assert _chisq_p(n_acc, probs) > P_MIN
    # Negative control: a histogram with alpha off by 0.02 at position 0 is rejected.
    wrong = probs.clone()
    wrong[0] -= 0.03
    wrong[K] += 0.03
    assert _chisq_p(n_acc, wrong) < P_CONTROL


# --- determinism: batch invariance, greedy, seeds and steps ----------------------------------

def _take(batch, rows):
    return {k: (None if v is None else v[rows]) for k, v in batch.items()}


def _place(batch, req, slots):
    """Copy the rows of `req` into `batch` at `slots`."""
    out = {}
    for k, v in batch.items():
        if v is None:
            out[k] = None
            continue
        v = v.clone()
        v[slots] = req[k]
        out[k] = v
    return out


def _torch_on(bk):
    """The torch reference on the same device as `bk`."""
    return SimpleNamespace(name="torch", device=bk.device, interpreted=False)


def _run(bk, batch, **kw):
    args = {k: (v.to(bk.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    return _cpu(sk.verify(**args, backend=bk.name, **kw))


@pytest.mark.parametrize("one_hot", [False, True], ids=["dense", "one_hot"])
def test_batch_invariance(any_backend, one_hot, verify_case):
    bk = any_backend
    K, V = 3, 32
    R = 2 if bk.interpreted else 3  # request rows: rejection-prone sampling rows and a greedy row
    draft = "onehot" if one_hot else "logits"
    req = verify_case(5, B=R, K=K, V=V, scale=2.0, draft=draft)
    req["num_draft"][:] = K
    req["temperature"][:] = torch.tensor([0.9, 0.0, 1.7])[:R]
    req["draft_tokens"] = torch.randint(0, V, (R, K), generator=torch.Generator().manual_seed(6))
    alone = [_run(bk, _take(req, [i]), return_divergence=True) for i in range(R)]
    ref = _run(_torch_on(bk), req, return_divergence=True)
    for i in range(R):  # the same request alone matches the reference backend
        assert torch.equal(alone[i].tokens[0], ref.tokens[i])
        assert torch.equal(alone[i].num_accepted[0], ref.num_accepted[i])

    layouts = [(3, [1, 0]), (4, [3, 1])] if bk.interpreted else [(7, [6, 0, 3]), (33, [17, 32, 0]), (33, [2, 9, 5])]
    if one_hot and bk.interpreted:
        layouts = layouts[:1]
    for size, slots in layouts:
        slots = slots[:R]
        filler = verify_case(1000 + size + slots[0], B=size, K=K, V=V, scale=2.0, draft=draft)
        batch = _place(filler, req, slots)
        out = _run(bk, batch, return_divergence=True)
        for i, s in enumerate(slots):
            assert torch.equal(out.tokens[s], alone[i].tokens[0]), (size, s)
            assert torch.equal(out.num_accepted[s], alone[i].num_accepted[0])
            assert torch.equal(out.num_emitted[s], alone[i].num_emitted[0])
            for f in DIVERGENCE_FIELDS:  # tokens are exact; sums may be reordered
                torch.testing.assert_close(getattr(out, f)[s], getattr(alone[i], f)[0], rtol=1e-5, atol=1e-5)


def _greedy_expected(target, drafts, num_draft):
    """Accept while draft == argmax(target_j) (first maximal index), then emit argmax."""
    B, K1, _ = target.shape
    am = target.float().argmax(-1)
    tokens = torch.full((B, K1), -1, dtype=torch.int64)
    n_acc = torch.zeros(B, dtype=torch.int32)
    for b in range(B):
        j = 0
        while j < int(num_draft[b]) and int(drafts[b, j]) == int(am[b, j]):
            tokens[b, j] = drafts[b, j]
            j += 1
        tokens[b, j] = am[b, j]
        n_acc[b] = j
    return tokens, n_acc


@pytest.mark.parametrize("one_hot", [False, True], ids=["dense", "one_hot"])
def test_greedy_is_argmax_decoding(any_backend, one_hot):
    bk = any_backend
    B, K, V = (4, 3, 16) if bk.interpreted else (64, 4, 50)
    g = torch.Generator().manual_seed(3)
    target = torch.randn(B, K + 1, V, generator=g)
    draft = None if one_hot else torch.randn(B, K, V, generator=g)
    am = target.argmax(-1)
    # Drafts follow the argmax for a random prefix, then deviate.
    prefix = torch.randint(0, K + 1, (B,), generator=g)
    noise = torch.randint(1, V, (B, K), generator=g)
    pos = torch.arange(K)
    drafts = torch.where(pos[None, :] < prefix[:, None], am[:, :K], (am[:, :K] + noise) % V)
    num_draft = torch.randint(0, K + 1, (B,), generator=g)
    num_draft[: B // 2] = K
    exp_tokens, exp_acc = _greedy_expected(target, drafts, num_draft)
    for temperature in (0.0, 0):  # float and int zero
        out = _run(bk, dict(target_logits=target, draft_logits=draft, draft_tokens=drafts,
                            num_draft=num_draft, temperature=temperature, seed=torch.arange(B)))
        assert torch.equal(out.tokens, exp_tokens)
        assert torch.equal(out.num_accepted, exp_acc)
        if bk.interpreted:
            break
    # The seed is irrelevant to greedy rows.
    out2 = _run(bk, dict(target_logits=target, draft_logits=draft, draft_tokens=drafts, num_draft=num_draft,
                         temperature=torch.zeros(B), seed=torch.arange(B) + 12345, step=9))
    assert torch.equal(out2.tokens, exp_tokens)


def test_mixed_greedy_and_sampling_rows(any_backend, verify_case):
    bk = any_backend
    B, K, V = (3, 3, 16) if bk.interpreted else (16, 4, 40)
    batch = verify_case(21, B=B, K=K, V=V, scale=2.0)
    batch["temperature"] = torch.where(torch.arange(B) % 2 == 0, 0.0, 0.5 + torch.arange(B) / B)
    out = _run(bk, batch)
    greedy_rows = (batch["temperature"] == 0).nonzero().flatten()
    exp_tokens, exp_acc = _greedy_expected(batch["target_logits"][greedy_rows], batch["draft_tokens"][greedy_rows],
                                           batch["num_draft"][greedy_rows])
    assert torch.equal(out.tokens[greedy_rows], exp_tokens)
    assert torch.equal(out.num_accepted[greedy_rows], exp_acc)
    for b in range(B):
        alone = _run(bk, _take(batch, [b]))
        assert torch.equal(alone.tokens[0], out.tokens[b]), b
        assert torch.equal(alone.num_accepted[0], out.num_accepted[b])


def test_step_changes_the_draws(cheap_backend):
    bk = cheap_backend
    K, V, n = 3, 50, 2000
    target = _randn(51, K + 1, V, scale=0.3)  # flat distributions: draws differ often
    draft = _randn(52, K, V, scale=0.3)
    drafts = _sample(_softmax64(draft, 1.0), n, seed=53)
    a = _verify_rows(bk, target, draft, drafts, seed0=99, step=0)
    b = _verify_rows(bk, target, draft, drafts, seed0=99, step=0)
    c = _verify_rows(bk, target, draft, drafts, seed0=99, step=1)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.num_accepted, b.num_accepted)
    differ = (a.tokens != c.tokens).any(1).double().mean()
    assert differ > 0.5, f"only {float(differ):.2%} of rows changed with the step"
    # A different step is still lossless (fresh, correctly distributed draws).
    p = _softmax64(target, 1.0)
    assert _chisq_p(c.tokens[:, 0], p[0]) > P_MIN
    # Per-row steps: each row behaves as a call with that scalar step.
    steps = torch.arange(n) % 2
    mixed = _verify_rows(bk, target, draft, drafts, seed0=99, step=steps.to(bk.device))
    assert torch.equal(mixed.tokens, torch.where((steps == 0)[:, None], a.tokens, c.tokens))
    # Different seeds, same step: also different draws.
    d = _verify_rows(bk, target, draft, drafts, seed0=99 + n, step=0)
    assert (a.tokens != d.tokens).any(1).double().mean() > 0.5


def test_unseeded_calls_draw_fresh_randomness(cheap_backend):
    bk = cheap_backend
    K, V, n = 2, 50, 256
    target = _randn(61, n, K + 1, V, scale=0.3).to(bk.device)
    draft = _randn(62, n, K, V, scale=0.3).to(bk.device)
    drafts = torch.randint(0, V, (n, K), generator=torch.Generator().manual_seed(63)).to(bk.device)
    torch.manual_seed(0)
    a = sk.verify(target, draft, drafts, backend=bk.name)
    b = sk.verify(target, draft, drafts, backend=bk.name)
    assert bool((a.tokens != b.tokens).any())
