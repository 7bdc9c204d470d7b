"""Proofs for block verification (``verify(..., method="block")``).

(a) Exact enumeration: the closed-form (float64) output distribution of block verification
    (Sun et al., "Block Verification Accelerates Speculative Decoding", arXiv 2403.10444,
    Algorithm 2; the coin flips integrated out analytically, nothing sampled) equals the
    verifier's joint distribution on tree models (p and q depend on the prefix), random and
    adversarial; a negative control (h_i without its 1 - w_i term) is not exact.
(b) Its expected accepted length is >= token verification's on every tested model, and the
    paper's motivating example is reproduced: binary vocabulary, context-free
    p = (1/3, 2/3), q = (2/3, 1/3), two drafts: 10/9 accepted tokens per call under token
    verification, 11/9 under block verification.
(c) The real backends follow the closed form: the reference's tau equals a float64
    recomputation from the same Philox words, and a chi-square of the JOINT emitted sequence
    (completed to K+1 tokens by sampling the verifier) fits the verifier, with negative
    controls that must fail.
(d) Greedy rows equal token mode, divergences and TaskStats agree, bad ``method`` values.

The statistical thresholds are those of test_verify_lossless.py (fixed seeds, p > 1e-3 for
the truth, p < 1e-6 for each control).
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats as sps

import specfair_kernels as sk
from specfair_kernels import rng
from specfair_kernels.stats import DIVERGENCE_FIELDS

P_MIN, P_CONTROL = 1e-3, 1e-6

# --- (a), (b): the closed form -------------------------------------------------------------

def tree(V: int, K: int, gen: np.random.Generator, kind: str = "random"):
    """(p, q) dicts prefix -> probability vector [V]; ``kind`` picks adversarial shapes."""
    p, q = {}, {}
    for n in range(K + 1):
        for pre in itertools.product(range(V), repeat=n):
            pv = gen.dirichlet(np.full(V, 0.7))
            p[pre] = pv
            if n == K:
                continue
            if kind == "equal":
                qv = pv.copy()
            elif kind == "disjoint":  # q lives where p is 0 on half of the vocabulary
                mask = np.arange(V) < V // 2
                pv = np.where(mask, pv, 0.0)
                p[pre] = pv / pv.sum()
                qv = np.where(mask, 0.0, gen.dirichlet(np.full(V, 0.7)))
                qv = qv / qv.sum()
            elif kind == "one_hot":
                qv = np.eye(V)[gen.integers(V)]
            elif kind == "zeros":  # sparse p and q sharing some support
                pv = pv * (gen.random(V) < 0.6)
                pv = pv if pv.sum() > 0 else np.eye(V)[0]
                p[pre] = pv / pv.sum()
                qv = gen.dirichlet(np.full(V, 0.7)) * (gen.random(V) < 0.6)
                qv = qv / qv.sum() if qv.sum() > 0 else np.eye(V)[1]
            else:
                qv = gen.dirichlet(np.full(V, 0.7))
            q[pre] = qv
    return p, q

def target_joint(p, V: int, K: int) -> dict:
    """Probability of every length-(K+1) sequence under the verifier alone."""
    out = {}
    for z in itertools.product(range(V), repeat=K + 1):
        out[z] = float(np.prod([p[z[:i]][z[i]] for i in range(K + 1)]))
    return out

def _complete(emitted: dict, p, V: int, K: int) -> dict:
    """Continue each emitted sequence by sampling the verifier up to length K+1."""
    out = dict.fromkeys(itertools.product(range(V), repeat=K + 1), 0.0)
    for s, prob in emitted.items():
        for rest in itertools.product(range(V), repeat=K + 1 - len(s)):
            z = s + rest
            out[z] += prob * float(np.prod([p[z[:i]][z[i]] for i in range(len(s), K + 1)]))
    return out

def _residual(pv, qv, w):
    r = np.maximum(w * pv - qv, 0.0)
    return r / r.sum() if r.sum() > 0 else pv

def block_h(p, q, x):
    """Weights w_0..w_K, residual masses r_0..r_{K-1} and h_1..h_K (h[0] = 1) for drafts x."""
    K = len(x)
    w = [1.0]
    for i in range(K):
        pi, qi = p[x[:i]][x[i]], q[x[:i]][x[i]]
        w.append(min(1.0, w[-1] * pi / qi) if qi > 0 else (1.0 if pi > 0 and w[-1] > 0 else 0.0))
    r = [float(np.maximum(w[i] * p[x[:i]] - q[x[:i]], 0.0).sum()) for i in range(K)]
    h = [1.0] + [r[i] / (r[i] + 1 - w[i]) if r[i] > 0 else 0.0 for i in range(1, K)] + [w[K]]
    return w, r, h

def emitted(p, q, V: int, K: int, method: str, drop_one_minus_w: bool = False):
    """Exact distribution of the emitted sequence and the expected accepted length.

    ``drop_one_minus_w`` is a negative control: block with h_i = 1 for r_i > 0."""
    out: dict = {}
    mean_acc = 0.0
    for x in itertools.product(range(V), repeat=K):
        px = float(np.prod([q[x[:i]][x[i]] for i in range(K)]))
        if px == 0:
            continue
        if method == "token":
            acc = [min(1.0, p[x[:i]][x[i]] / q[x[:i]][x[i]]) for i in range(K)]
            stop = []
            run = 1.0
            for t in range(K + 1):
                stop.append(run * ((1 - acc[t]) if t < K else 1.0))
                run *= acc[t] if t < K else 1.0
            w = [1.0] * (K + 1)
        else:
            w, r, h = block_h(p, q, x)
            if drop_one_minus_w:
                h = [1.0] + [1.0 if r[i] > 0 else 0.0 for i in range(1, K)] + [h[K]]
            stop = [h[t] * float(np.prod([1 - h[i] for i in range(t + 1, K + 1)])) for t in range(K + 1)]
        for t, pt in enumerate(stop):
            if pt == 0:
                continue
            mean_acc += px * pt * t
            pre = x[:t]
            dist = p[pre] if t == K else _residual(p[pre], q[pre], w[t])
            for y in range(V):
                if dist[y] > 0:
                    s = pre + (y,)
                    out[s] = out.get(s, 0.0) + px * pt * float(dist[y])
    return _complete(out, p, V, K), mean_acc

def _max_err(a: dict, b: dict) -> float:
    return max(abs(a[z] - b[z]) for z in b)

KINDS = ("random", "equal", "disjoint", "one_hot", "zeros")

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("V,K", [(2, 3), (3, 2), (4, 2), (3, 3)])
def test_block_is_exact_by_enumeration(kind, V, K):
    for s in range(4):
        p, q = tree(V, K, np.random.default_rng(1000 * V + 10 * K + s), kind)
        truth = target_joint(p, V, K)
        assert abs(sum(truth.values()) - 1) < 1e-12
        block, acc_block = emitted(p, q, V, K, "block")
        token, acc_token = emitted(p, q, V, K, "token")
        assert _max_err(block, truth) < 1e-12, (kind, s)
        assert _max_err(token, truth) < 1e-12, (kind, s)
        # (b) never fewer accepted tokens in expectation than token verification.
        assert acc_block >= acc_token - 1e-12, (kind, s, acc_block, acc_token)
        if kind == "equal":
            assert abs(acc_block - K) < 1e-12 and abs(acc_token - K) < 1e-12

@pytest.mark.parametrize("V,K", [(3, 2), (4, 2), (3, 3)])
def test_enumeration_controls_fail(V, K):
    """The enumeration can fail: h_i without 1 - w_i, or a plain-p resample, are not exact."""
    p, q = tree(V, K, np.random.default_rng(7), "random")
    truth = target_joint(p, V, K)
    wrong, _ = emitted(p, q, V, K, "block", drop_one_minus_w=True)
    assert _max_err(wrong, truth) > 1e-2
    # Block strictly beats token on some random model (the improvement is real).
    gains = []
    for s in range(5):
        p, q = tree(V, K, np.random.default_rng(s), "random")
        gains.append(emitted(p, q, V, K, "block")[1] - emitted(p, q, V, K, "token")[1])
    assert min(gains) >= -1e-12 and max(gains) > 1e-3

def test_paper_example():
    """Sun et al., section 1: V = {a, b}, p = (1/3, 2/3), q = (2/3, 1/3) at every position,
    two drafts: token verification accepts 10/9 tokens per call, block verification 11/9."""
    pa, qa = np.array([1 / 3, 2 / 3]), np.array([2 / 3, 1 / 3])
    p = {pre: pa for n in range(3) for pre in itertools.product(range(2), repeat=n)}
    q = {pre: qa for n in range(2) for pre in itertools.product(range(2), repeat=n)}
    block, acc_block = emitted(p, q, 2, 2, "block")
    token, acc_token = emitted(p, q, 2, 2, "token")
    assert abs(acc_token - 10 / 9) < 1e-12
    assert abs(acc_block - 11 / 9) < 1e-12
    truth = target_joint(p, 2, 2)
    assert _max_err(block, truth) < 1e-12 and _max_err(token, truth) < 1e-12

# --- (c) the backends follow the closed form -----------------------------------------------

def _product_case(seed: int, K: int, V: int, temperature: float):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(K + 1, V, generator=g)
    draft = target[:K] * 0.3 + torch.randn(K, V, generator=g) * 1.2
    p = torch.softmax(target.double() / temperature, -1)
    q = torch.softmax(draft.double() / temperature, -1)
    return target, draft, p, q


def _run(bk, target, draft, drafts, temperature, seed0=0, step=3, method="block", **kw):
    n = drafts.shape[0]
    t = target.to(bk.device).unsqueeze(0).expand(n, -1, -1)
    d = None if draft is None else draft.to(bk.device).unsqueeze(0).expand(n, -1, -1)
    seeds = torch.arange(n, dtype=torch.int64, device=bk.device) + seed0
    out = sk.verify(t, d, drafts.to(bk.device), temperature=temperature, seed=seeds, step=step,
                    backend=bk.name, method=method, **kw)
    return out.tokens.cpu(), out.num_accepted.cpu().long(), out.num_emitted.cpu().long()

def test_reference_tau_is_the_closed_form_rule():
    """tau of the torch reference == a float64 recomputation of Algorithm 2 from the same words."""
    K, V, n = 3, 5, 3000
    target, draft, p, q = _product_case(3, K, V, 1.0)
    g = torch.Generator().manual_seed(4)
    drafts = torch.stack([torch.multinomial(q[j].float(), n, True, generator=g) for j in range(K)], 1)
    _, n_acc, _ = _run(_TorchCPU, target, draft, drafts, 1.0, seed0=50, step=2)
    seeds = torch.arange(n, dtype=torch.int64) + 50
    u = rng.uniform_accept(rng.philox(seeds[:, None], 0, torch.arange(K)[None, :],
                                      torch.full((n, 1), 2, dtype=torch.int64), rng.STREAM_ACCEPT)).double()
    pt = {pre: p[len(pre)].numpy() for n_ in range(K + 1) for pre in itertools.product(range(V), repeat=n_)}
    qt = {pre: q[len(pre)].numpy() for n_ in range(K) for pre in itertools.product(range(V), repeat=n_)}
    want = []
    for row in range(n):
        x = tuple(drafts[row].tolist())
        _, _, h = block_h(pt, qt, x)
        hits = [i for i in range(1, K + 1) if float(u[row, i - 1]) <= h[i]]
        want.append(max(hits, default=0))
    assert torch.equal(n_acc, torch.tensor(want))
    assert len(set(want)) == K + 1, "test design: every tau should occur"

class _Bk:
    def __init__(self, name, device="cpu"):
        self.name, self.device = name, device

_TorchCPU = _Bk("torch")

def _joint_codes(tokens, n_emit, p, gen):
    """Complete each emitted sequence to K+1 tokens by sampling p_j; base-V codes [n]."""
    n, K1 = tokens.shape
    V = p.shape[1]
    fill = torch.stack([torch.multinomial(p[j].float(), n, True, generator=gen) for j in range(K1)], 1)
    full = torch.where(torch.arange(K1)[None, :] < n_emit[:, None], tokens, fill)
    return (full * V ** torch.arange(K1 - 1, -1, -1)[None, :]).sum(1)

def _chisq(codes, probs):
    exp = probs * codes.numel()
    obs = torch.bincount(codes, minlength=probs.numel()).double()
    assert float(obs[exp == 0].sum()) == 0
    keep = exp >= 5
    obs = torch.cat([obs[keep], obs[~keep].sum().reshape(1)])
    exp = torch.cat([exp[keep], exp[~keep].sum().reshape(1)])
    if float(exp[-1]) == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(sps.chisquare(obs.numpy(), exp.numpy()).pvalue)

@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.5])
@pytest.mark.parametrize("K", [2, 3])
def test_joint_sequence_follows_target(cheap_backend, K, temperature):
    V, n = 3, 24_000
    target, draft, p, q = _product_case(20 + K, K, V, temperature)
    g = torch.Generator().manual_seed(K)
    drafts = torch.stack([torch.multinomial(q[j].float(), n, True, generator=g) for j in range(K)], 1)
    tokens, n_acc, n_emit = _run(cheap_backend, target, draft, drafts, temperature, seed0=10 * K)
    assert torch.equal(n_emit, n_acc + 1)
    truth = p[0]
    for j in range(1, K + 1):
        truth = (truth[..., None] * p[j]).reshape(-1)
    gen = torch.Generator().manual_seed(99)
    assert _chisq(_joint_codes(tokens, n_emit, p, gen), truth) > P_MIN
    # Control 1: the drafts themselves (plus a bonus) are q's joint, not p's.
    all_drafts = torch.cat([drafts, tokens[:, -1:].clamp(min=0)], 1)
    assert _chisq(_joint_codes(all_drafts, torch.full((n,), K + 1), p, gen), truth) < P_CONTROL
    # Control 2: block's accepted prefix, but a plain sample of p after a stop before K.
    plain = torch.stack([torch.multinomial(p[j].float(), n, True, generator=gen) for j in range(K + 1)], 1)
    naive = tokens.clone()
    rows = torch.arange(n)
    stop = n_acc < K
    naive[rows[stop], n_acc[stop]] = plain[rows[stop], n_acc[stop]]
    assert _chisq(_joint_codes(naive, n_emit, p, gen), truth) < P_CONTROL
    # Block accepts more than token on the same drafts and words (in the mean).
    _, n_tok, _ = _run(cheap_backend, target, draft, drafts, temperature, seed0=10 * K, method="token")
    assert float(n_acc.double().mean()) > float(n_tok.double().mean())


# --- (d) contracts shared with token mode -----------------------------------------------------

def _both(bk, case, **kw):
    return [sk.verify(**case, backend=bk.name, method=m, **kw) for m in ("token", "block")]


@pytest.mark.parametrize("draft", ["logits", "onehot", "equal"])
def test_greedy_rows_equal_token_and_divergences_agree(any_backend, verify_case, draft):
    small = any_backend.interpreted
    case = verify_case(5, B=4 if small else 64, K=3, V=16 if small else 50, draft=draft, tokens="likely",
                       device=any_backend.device)
    tok, blk = _both(any_backend, case, return_divergence=True)
    greedy = case["temperature"] == 0
    assert bool(greedy.any()) and bool((~greedy).any()), "test design: mixed batch"
    assert torch.equal(tok.tokens[greedy], blk.tokens[greedy])
    assert torch.equal(tok.num_accepted[greedy], blk.num_accepted[greedy])
    for f in DIVERGENCE_FIELDS:  # they describe p and q, not the rule
        assert torch.equal(getattr(tok, f), getattr(blk, f)), f
    # Ragged rows: nothing beyond num_draft is accepted; one token after the accepted run.
    assert bool((blk.num_accepted.long() <= case["num_draft"]).all())
    assert torch.equal(blk.num_emitted, blk.num_accepted + 1)
    emitted = (blk.tokens >= 0).sum(1)
    assert torch.equal(emitted, blk.num_emitted.long())
    acc = torch.arange(3, device=blk.tokens.device)[None, :] < blk.num_accepted[:, None]
    assert torch.equal(torch.where(acc, blk.tokens[:, :3], -1), torch.where(acc, case["draft_tokens"], -1))


def test_equal_draft_accepts_everything_in_block_mode(any_backend, verify_case):
    case = verify_case(6, B=4, K=3, V=16, draft="equal", tokens="from_q", temps=(0.7, 1.0),
                       device=any_backend.device)
    out = sk.verify(**case, backend=any_backend.name, method="block")
    assert torch.equal(out.num_accepted.long(), case["num_draft"])


def test_invalid_rows_and_task_stats(any_backend, verify_case):
    case = verify_case(8, B=4, K=3, V=16, ragged=False, temps=(1.0,), num_tasks=2, device=any_backend.device)
    case["target_logits"][1, 2, 3] = float("nan")
    case["target_logits"][2, 0, 0] = float("inf")
    stats = [sk.TaskStats(2, 3, device=any_backend.device) for _ in range(2)]
    outs = [sk.verify(**case, stats=s, backend=any_backend.name, method=m) for s, m in zip(stats, ("token", "block"))]
    blk = outs[1]
    assert blk.num_emitted[1] == 0 and blk.num_emitted[2] == 0
    assert bool((blk.tokens[1:3] == -1).all())
    col = {name: i for i, name in enumerate(sk.stats.COUNT_NAMES)}
    for name in ("drafted", "steps", "invalid_rows"):
        assert torch.equal(stats[0].counts[:, col[name]], stats[1].counts[:, col[name]]), name
    assert torch.equal(stats[0].sums, stats[1].sums)  # divergences do not depend on the rule
    tasks = case["task_ids"].long()
    want = torch.zeros(2, dtype=torch.int64, device=tasks.device).index_add_(0, tasks, blk.num_accepted.long())
    assert torch.equal(stats[1].counts[:, col["accepted"]], want)  # accepted = tau
    assert int(stats[1].counts[:, col["invalid_rows"]].sum()) == 2


def test_batch_invariance(any_backend, verify_case):
    case = verify_case(9, B=4, K=3, V=16, temps=(0.0, 0.7, 1.5), device=any_backend.device)
    full = sk.verify(**case, backend=any_backend.name, method="block")
    for b in range(4):
        one = {k: (v[b:b + 1] if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
        out = sk.verify(**one, backend=any_backend.name, method="block")
        assert torch.equal(out.tokens[0], full.tokens[b])
        assert torch.equal(out.num_accepted[0], full.num_accepted[b])


@pytest.mark.parametrize("bad,err", [("Block", ValueError), ("", ValueError), ("tokens", ValueError),
                                     (None, TypeError), (1, TypeError)])
def test_bad_method(any_backend, verify_case, bad, err):
    case = verify_case(1, B=2, K=2, V=8, device=any_backend.device)
    with pytest.raises(err, match="method"):
        sk.verify(**case, backend=any_backend.name, method=bad)


@pytest.mark.parametrize("draft", ["logits", "onehot", "correlated", "equal"])
@pytest.mark.parametrize("tdtype", [torch.float32, torch.bfloat16])
def test_cross_backend_equal(other_backend, verify_case, draft, tdtype):
    """Block mode gives torch.equal tokens and counts on every backend (mixed greedy/sampling, ragged)."""
    small = other_backend.interpreted
    for s in range(1 if small else 4):
        case = verify_case(40 + s, B=4 if small else 48, K=3, V=16 if small else 70, draft=draft, tdtype=tdtype,
                           tokens="likely", temps=(0.0, 0.7, 1.0, 1.5), mask_frac=0.1, device=other_backend.device)
        got = sk.verify(**case, backend=other_backend.name, method="block", return_divergence=True)
        ref = sk.verify(**{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in case.items()},
                        backend="torch", method="block", return_divergence=True)
        assert torch.equal(got.tokens.cpu(), ref.tokens), (draft, s)
        assert torch.equal(got.num_accepted.cpu(), ref.num_accepted)
        assert torch.equal(got.num_emitted.cpu(), ref.num_emitted)


def test_auto_picks_triton_for_block_mode(monkeypatch, interpreted_backend, verify_case):
    """Where 'auto' picks Triton (CUDA), block mode runs on the Triton kernel too (no fallback)."""
    from specfair_kernels import backends
    from specfair_kernels.ops import verify as ops_verify

    case = verify_case(3, B=3, K=2, V=8)
    want = sk.verify(**case, backend="torch", method="block")
    calls = []
    launch = ops_verify.launch
    monkeypatch.setattr(ops_verify, "launch", lambda *a, **kw: calls.append(kw["method"]) or launch(*a, **kw))
    monkeypatch.setattr(backends, "select", lambda op, backend, device: "triton")  # as on CUDA
    got = sk.verify(**case, backend="auto", method="block")
    assert calls == ["block"]
    assert torch.equal(got.tokens, want.tokens) and torch.equal(got.num_accepted, want.num_accepted)
