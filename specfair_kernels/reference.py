"""Batched pure-torch backend: the oracle the other backends are tested against.

This file *is* the specification of `verify`; the Triton kernels (`ops/verify.py`) and
the C++ backend (`csrc/verify.cpp`) compute the same quantities in the same fp32
formulation, with the same random words (`rng.py`), so their tokens are identical.

Per row b (p = verifier/target, q = drafter):

1. ``tau = temperature[b]``, or 1 for a greedy row (temperature 0); divergences of
   greedy rows are therefore those of the untempered softmax.
   ``a = target_logits / tau``, ``d = draft_logits / tau`` in fp32.
2. Used positions: target ``j <= num_draft[b]``, draft ``j < num_draft[b]``.  A row
   whose used logits hold NaN or +inf, or whose used distribution is all -inf, is
   *invalid*: it emits nothing (tokens -1, num_accepted = num_emitted = 0) and its
   divergences are NaN.  -inf is an ordinary masked logit.
3. ``log p(x) = a[x] - logsumexp(a)``, likewise q; one-hot drafts have log q(x) = 0.
4. Accept, for j = 0, 1, ... until the first rejection:
   greedy: ``x_j == argmax(a_j)`` (first maximal index);
   sampling: ``log p(x_j) > -inf and log(u_j) + log q(x_j) <= log p(x_j)`` with
   ``u_j = uniform_accept(philox(seed, 0, j, step, STREAM_ACCEPT))`` in (0, 1].
5. At ``j* = num_accepted``: greedy rows emit ``argmax(a_j*)``.  Sampling rows draw
   from the weights ``w = max(0, p - q)`` after a rejection (``j* < num_draft``), a
   sample of normalise(max(0, p - q)), or ``w = p`` after all drafts were accepted (the
   bonus, a sample of p), with ``p = exp(a_j* - lse)``; if rounding leaves no residual
   mass (p and q agree to fp32 precision there) the bonus weights decide.  The draw is
   `race`, a two-level exponential race keyed by ``(seed, j*, step)``.
6. Divergences at every used drafted position, on the tempered distributions:
   alpha = sum min(p, q), KL(p||q), CE(p, q) = -sum p log q, H(p) = -sum p log p.
   One-hot drafts: alpha = p(x_j), and CE = KL = +inf unless p(x_j) is 1 in fp32.
"""
from __future__ import annotations

import torch

from . import rng

NEG_INF = float("-inf")


def _log_softmax_parts(x: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dim, -inf for an all -inf row (never NaN)."""
    m = x.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return (torch.log(torch.exp(x - m).sum(-1, keepdim=True)) + m).squeeze(-1)


def _bad(x: torch.Tensor) -> torch.Tensor:
    """[..., V] -> [...]: holds NaN or +inf, or is all -inf."""
    return (torch.isnan(x) | (x == float("inf"))).any(-1) | (x == NEG_INF).all(-1)


def race(w: torch.Tensor, seed: torch.Tensor, j: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """A sample of normalise(w) per row: [B, V] weights >= 0 -> [B] int64 vocabulary index.

    Two exponential races (Philox words from `rng`).  The vocabulary is cut into groups of
    ``rng.RACE_GROUP`` consecutive entries; group g has weight ``W_g = sum of its w_i``
    (fp32) and draws ``F_g = exponential(philox(seed, g, j, step, STREAM_GROUP))``; the
    winner is ``argmax_g W_g / F_g``.  Within it, entry i draws ``E_i =
    exponential(philox(seed, i, j, step, STREAM_RACE))`` and the token is ``argmax_i
    w_i / E_i``.  argmax is the first maximal index.  min_g F_g / W_g is Exp(sum W)
    and attained at g with probability W_g / sum W, and likewise inside the group, so
    entry i is drawn with probability w_i / sum w, exactly; a zero weight never wins.
    """
    B, V = w.shape
    G = rng.RACE_GROUP
    n_groups = -(-V // G)
    dev = w.device
    wg = torch.nn.functional.pad(w, (0, n_groups * G - V)).view(B, n_groups, G).sum(-1)
    groups = torch.arange(n_groups, device=dev)
    f = rng.exponential(rng.philox(seed[:, None], groups[None, :], j[:, None], step[:, None], rng.STREAM_GROUP))
    g = (wg / f).argmax(-1)
    idx = g[:, None] * G + torch.arange(G, device=dev)[None, :]  # [B, G]
    inside = idx < V
    e = rng.exponential(rng.philox(seed[:, None], idx, j[:, None], step[:, None], rng.STREAM_RACE))
    score = torch.where(inside, w.gather(1, idx.clamp(max=V - 1)) / e, -1.0)  # -1: never wins
    return idx.gather(1, score.argmax(-1, keepdim=True)).squeeze(1)


def divergences(a: torch.Tensor, logq: torch.Tensor, la: torch.Tensor) -> dict[str, torch.Tensor]:
    """alpha, KL, CE, H over the last dim from tempered target logits ``a``, log q and lse(a)."""
    logp = a - la.unsqueeze(-1)
    p = torch.exp(logp)
    q = torch.exp(logq)
    pos = p > 0
    zero = torch.zeros((), dtype=p.dtype, device=p.device)
    entropy = -torch.where(pos, p * logp, zero).sum(-1)
    ce = -torch.where(pos, p * logq, zero).sum(-1)
    kl = torch.where(pos, p * (logp - logq), zero).sum(-1)
    alpha = torch.minimum(p, q).sum(-1)
    return {"alpha": alpha, "kl": kl, "ce": ce, "entropy": entropy}


def verify(target_logits, draft_logits, draft_tokens, num_draft, temperature, seed, step, need_divergence):
    """Canonical inputs (see api.verify) -> (tokens, num_accepted, num_emitted, divergence dict | None)."""
    B, K1, V = target_logits.shape
    K = K1 - 1
    dev = target_logits.device
    greedy = temperature == 0
    tau = torch.where(greedy, torch.ones_like(temperature), temperature)
    a = target_logits.float() / tau[:, None, None]
    pos = torch.arange(K1, device=dev)
    t_used = pos[None, :] <= num_draft[:, None]  # [B, K+1]
    d_used = t_used[:, :K] & (pos[None, :K] < num_draft[:, None])  # [B, K]

    bad = (_bad(a) & t_used).any(1)
    la = _log_softmax_parts(a)  # [B, K+1]
    x = draft_tokens.clamp(0, V - 1)
    ax = a[:, :K].gather(-1, x.unsqueeze(-1)).squeeze(-1)
    logp_x = ax - la[:, :K]
    if draft_logits is not None:
        d = draft_logits.float() / tau[:, None, None]
        bad |= (_bad(d) & d_used).any(1)
        lb = _log_softmax_parts(d)  # [B, K]
        logq_x = d.gather(-1, x.unsqueeze(-1)).squeeze(-1) - lb
    else:
        d = lb = None
        logq_x = torch.zeros_like(logp_x)

    j = pos[:K].unsqueeze(0)
    u = rng.uniform_accept(rng.philox(seed[:, None], 0, j, step[:, None], rng.STREAM_ACCEPT))
    acc_sample = (logp_x > NEG_INF) & (torch.log(u) + logq_x <= logp_x)
    argmax_a = a.argmax(-1)  # first maximal index
    acc_greedy = x == argmax_a[:, :K]
    acc = torch.where(greedy[:, None], acc_greedy, acc_sample) & d_used
    n_acc = torch.cumprod(acc.long(), 1).sum(1)  # leading run of accepts

    rows = torch.arange(B, device=dev)
    a_s = a[rows, n_acc]  # [B, V] target at the sampling position
    vocab = torch.arange(V, device=dev)
    p_s = torch.exp(a_s - la[rows, n_acc][:, None])
    w = p_s
    # No host synchronisation anywhere (no .any()/.item(), no boolean indexing), so this
    # backend can be captured in a CUDA graph like the Triton one.
    if K > 0:
        residual = n_acc < num_draft
        js = n_acc.clamp(max=K - 1)
        if d is not None:
            q_s = torch.exp(d[rows, js] - lb[rows, js][:, None])
        else:
            q_s = (vocab[None, :] == x[rows, js][:, None]).float()
        r = torch.clamp(p_s - q_s, min=0.0)
        use_r = residual & (r > 0).any(-1)
        w = torch.where(use_r[:, None], r, p_s)
    tok = race(w, seed, n_acc, step)
    tok = torch.where(greedy, argmax_a[rows, n_acc], tok)

    tokens = torch.full((B, K1), -1, dtype=torch.int64, device=dev)
    keep = pos[None, :K] < n_acc[:, None]
    tokens[:, :K] = torch.where(keep, x, -1)
    tokens[rows, n_acc] = tok
    tokens = torch.where(bad[:, None], -1, tokens)
    n_acc = torch.where(bad, 0, n_acc).to(torch.int32)
    n_emit = torch.where(bad, 0, n_acc + 1).to(torch.int32)

    div = None
    if need_divergence:
        if K == 0:
            div = {k: torch.zeros(B, 0, device=dev) for k in ("alpha", "kl", "ce", "entropy")}
        else:
            if d is not None:
                logq = d - lb.unsqueeze(-1)
            else:  # placeholder; one-hot CE/KL are set below
                logq = torch.where(vocab[None, None, :] == x[..., None], 0.0, NEG_INF)
            # Masked positions may hold garbage (even NaN): compute on sanitised values.
            a_k = torch.where(d_used[..., None], a[:, :K], 0.0)
            logq = torch.where(d_used[..., None], logq, 0.0)
            la_k = torch.where(d_used, la[:, :K], 0.0)
            div = divergences(a_k, logq, la_k)
            if d is None:
                # q is one-hot at x: CE = KL = +inf unless p(x) rounds to 1 in fp32.
                one = torch.exp(logp_x) >= 1
                inf = torch.tensor(float("inf"), device=dev)
                div["ce"] = torch.where(one, 0.0, inf)
                div["kl"] = div["ce"].clone()
            nan = torch.tensor(float("nan"), device=dev)
            for k in div:
                v = torch.where(d_used, div[k], 0.0)
                div[k] = torch.where(bad[:, None] & d_used, nan, v).float()
    return tokens, n_acc, n_emit, div
