"""Pure-torch backend of both ops: the oracle the other backends are tested against.

`verify_ref` (batched) and `token_divergence_ref` (chunked rows) share one divergence helper,
`divergences`.

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
from .stats import DIVERGENCE_FIELDS

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


def divergences(logp: torch.Tensor, logq: torch.Tensor, fields, support: torch.Tensor | None = None,
                p: torch.Tensor | None = None, q: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Divergences of q from p over the last dim, for each name in ``fields``.

    ``alpha`` = sum min(p, q), ``kl`` = KL(p||q), ``ce`` = -sum p log q, ``entropy`` = H(p),
    ``tv`` = 1/2 sum |p - q|.  ``logp``/``logq`` are log-probabilities [..., V] (-inf where
    a probability is 0); ``p``/``q`` their exp, if the caller has them.  ``support`` (bool
    [..., V]) is where p counts as positive: p > 0 by default (`verify`); a finite target
    logit for `token_divergence`, whose p may underflow to 0.  CE and KL are +inf where
    the support meets q = 0; only supported entries enter CE, KL and H, so no 0 * inf
    NaN arises.  Returns ``{field: [...]}``.
    """
    if p is None:
        p = torch.exp(logp)
    if q is None and ("alpha" in fields or "tv" in fields):
        q = torch.exp(logq)
    if support is None and any(f in fields for f in ("kl", "ce", "entropy")):
        support = p > 0
    zero = torch.zeros((), dtype=p.dtype, device=p.device)
    out = {}
    if "ce" in fields or "kl" in fields:
        fin_q = logq > NEG_INF
        infinite = (support & ~fin_q).any(-1)
        both = support & fin_q
        del fin_q
        if "ce" in fields:
            out["ce"] = torch.where(infinite, float("inf"), -torch.where(both, p * logq, zero).sum(-1))
        if "kl" in fields:
            out["kl"] = torch.where(infinite, float("inf"), torch.where(both, p * (logp - logq), zero).sum(-1))
        del both
    if "entropy" in fields:
        out["entropy"] = -torch.where(support, p * logp, zero).sum(-1)
    if "alpha" in fields:
        out["alpha"] = torch.minimum(p, q).sum(-1)
    if "tv" in fields:
        out["tv"] = 0.5 * (p - q).abs_().sum(-1)
    return {f: out[f] for f in fields}


def _block_chain(p, q, logp_x, logq_x, u, num_draft):
    """Block verification's accepted length tau [B] and weight w_tau [B] (sampling rows).

    Sun et al., "Block Verification Accelerates Speculative Decoding" (arXiv 2403.10444),
    Algorithm 2, 0-indexed: p [B, K+1, V] and q [B, K, V] are the per-position
    distributions, draft x_i is predicted at position i.  With K_b = num_draft[b]:
    ``w_0 = 1``, ``w_i = min(1, w_{i-1} p_{i-1}(x_{i-1}) / q_{i-1}(x_{i-1}))`` (log domain:
    a zero p(x) makes every later w 0, a zero q(x) with p(x) > 0 caps the ratio at 1);
    ``r_i = sum_x max(w_i p_i(x) - q_i(x), 0)`` (fp32 vocabulary sum);
    ``h_i = min(r_i / (r_i + 1 - w_i), w_i)`` for 1 <= i < K_b, 0 where r_i = 0 (the 0/0
    case w_i = 1, p_i = q_i included: nothing to stop on), and ``h_{K_b} = w_{K_b}``.  The
    cap changes nothing in exact arithmetic (r_i <= w_i, so h_i <= w_i); in fp32 it pins the
    bound every backend uses to skip r_i: a coin above w_i misses without the vocabulary sum.
    ``tau = max{i in 1..K_b : log(u_{i-1}) <= log h_i}``, else 0, where u_{i-1} is the
    very word token mode compares at position i-1.
    """
    B, K, _ = q.shape
    dev = p.device
    lw_prev = torch.zeros(B, device=dev)
    lws = [lw_prev]
    for i in range(K):
        inc = torch.where(logq_x[:, i] == NEG_INF, float("inf"), logp_x[:, i] - logq_x[:, i])
        inc = torch.where(logp_x[:, i] == NEG_INF, NEG_INF, inc)
        lw_prev = torch.where(lw_prev == NEG_INF, NEG_INF, torch.clamp(lw_prev + inc, max=0.0))
        lws.append(lw_prev)
    lw = torch.stack(lws, 1)  # [B, K+1]
    w = torch.exp(lw)
    r = torch.clamp(w[:, :K, None] * p[:, :K] - q, min=0.0).sum(-1)  # [B, K]
    h = torch.where(r > 0, r / (r + -torch.expm1(lw[:, :K])), 0.0)
    i = torch.arange(1, K + 1, device=dev)[None, :]
    # log h_i for i = 1..K: the residual ratio before the row's last draft, w there.
    log_h = torch.where(i < num_draft[:, None], torch.minimum(torch.log(torch.cat([h[:, 1:], h[:, :1]], 1)), lw[:, 1:]),
                        lw[:, 1:])
    hit = (torch.log(u) <= log_h) & (i <= num_draft[:, None])
    tau = torch.where(hit, i, 0).amax(1)
    return tau, w.gather(1, tau[:, None]).squeeze(1)


def verify_ref(target_logits, draft_logits, draft_tokens, num_draft, temperature, seed, step, need_divergence,
               method: str = "token"):
    """Canonical inputs (see api.verify) -> (tokens, num_accepted, num_emitted, divergence dict | None).

    ``method`` "token" is the rule in the module docstring; "block" replaces steps 4-5 for
    sampling rows by `_block_chain` (same words u_j) and draws at ``tau`` from
    normalise(max(0, w_tau p - q)) when ``tau < num_draft`` (p if that has no mass), else
    from p, with the same `race` keyed by ``(seed, tau, step)``.  Greedy rows are the
    argmax chain in both methods."""
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
    scale = None  # w_tau of block mode; token mode's residual is p - q (w = 1)
    if method == "block" and K > 0:
        p_all = torch.where(t_used[..., None], torch.exp(a - la[..., None]), 0.0)  # [B, K+1, V]
        if d is not None:
            q_all = torch.where(d_used[..., None], torch.exp(d - lb[..., None]), 0.0)
        else:
            q_all = (torch.arange(V, device=dev)[None, None, :] == x[..., None]).float()
        tau_b, w_b = _block_chain(p_all, q_all, torch.where(d_used, logp_x, 0.0),
                                  torch.where(d_used, logq_x, 0.0), u, num_draft)
        n_acc = torch.where(greedy, n_acc, tau_b)
        scale = torch.where(greedy, 1.0, w_b)

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
        r = torch.clamp(p_s - q_s if scale is None else scale[:, None] * p_s - q_s, min=0.0)
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
            div = {k: torch.zeros(B, 0, device=dev) for k in DIVERGENCE_FIELDS}
        else:
            if d is not None:
                logq = d - lb.unsqueeze(-1)
            else:  # placeholder; one-hot CE/KL are set below
                logq = torch.where(vocab[None, None, :] == x[..., None], 0.0, NEG_INF)
            # Masked positions may hold garbage (even NaN): compute on sanitised values.
            a_k = torch.where(d_used[..., None], a[:, :K], 0.0)
            logq = torch.where(d_used[..., None], logq, 0.0)
            la_k = torch.where(d_used, la[:, :K], 0.0)
            div = divergences(a_k - la_k.unsqueeze(-1), logq, DIVERGENCE_FIELDS)
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


# --- token_divergence: chunked rows ---------------------------------------------------------

CHUNK_BYTES = 32 * 2**20
"""Bound on the fp32 (or float64) temporaries of one chunk of `token_divergence_ref`."""
TEMPS_PER_ELEMENT = 8
"""Upper bound on live ``[rows, V]`` accumulation-dtype temporaries of one chunk (counted
generously; bool masks count as whole elements)."""


def chunk_rows(n_rows: int, vocab: int, acc_dtype: torch.dtype = torch.float32) -> int:
    """Rows per chunk so that ``TEMPS_PER_ELEMENT * rows * vocab`` accumulation-dtype
    elements fit in `CHUNK_BYTES` (at least one row, at most ``n_rows``)."""
    elem = torch.empty((), dtype=acc_dtype).element_size()
    per_row = TEMPS_PER_ELEMENT * max(vocab, 1) * elem
    return max(1, min(max(n_rows, 1), CHUNK_BYTES // per_row))


def _divergence_chunk(d: torch.Tensor, t: torch.Tensor, kind: str, temperature: float,
                      grad_out: torch.Tensor | None) -> torch.Tensor:
    """Values for rows ``d``/``t`` ``[n, V]``; writes the local gradient into ``grad_out``."""
    acc = torch.float64 if torch.float64 in (d.dtype, t.dtype) else torch.float32
    # One fresh accumulation-dtype tensor per model (division by T makes the copy).
    logq = d.to(acc).div_(temperature) if d.dtype != acc else d / temperature
    logp = t.to(acc).div_(temperature) if t.dtype != acc else t / temperature
    lse_q = torch.logsumexp(logq, -1)  # NaN with a NaN, +inf with +inf, -inf if all -inf
    lse_p = torch.logsumexp(logp, -1)
    bad = ~(torch.isfinite(lse_q) & torch.isfinite(lse_p))  # [n]: no valid distribution
    logq.sub_(lse_q.unsqueeze(-1))
    logp.sub_(lse_p.unsqueeze(-1))
    q = logq.exp()
    p = logp.exp()
    # p_i > 0 exactly where the target logit is finite, even where exp underflows to 0.
    support = logp > NEG_INF if kind in ("ce", "kl") else None
    base = "alpha" if kind == "neg_log_alpha" else kind
    val = divergences(logp, logq, (base,), support, p, q)[base]
    alpha = val
    if kind == "neg_log_alpha":
        val = -torch.log(alpha)  # +inf where alpha = 0 (disjoint supports)
    if grad_out is not None:
        del logp, logq, support
        if kind in ("ce", "kl"):
            g = q.sub_(p).div_(temperature)  # (q - p) / T, reusing q's storage
        else:
            qlt = torch.where(q < p, q, torch.zeros((), dtype=acc, device=d.device))  # [q_k < p_k] q_k
            s = qlt.sum(-1, keepdim=True)
            g = qlt.sub_(q.mul_(s)).div_(-temperature if kind == "tv" else temperature)
            if kind == "neg_log_alpha":  # d(-log alpha) = -(d alpha) / alpha; 0 where alpha = 0
                g.mul_(neg_log_alpha_scale(alpha).unsqueeze(-1))
        g.masked_fill_(bad.unsqueeze(-1), float("nan"))
        grad_out.copy_(g)
    return torch.where(bad, torch.full((), float("nan"), dtype=acc, device=d.device), val)


def neg_log_alpha_scale(alpha: torch.Tensor) -> torch.Tensor:
    """Per-row factor turning the gradient of alpha into that of -log alpha: -1 / alpha, and 0
    where alpha = 0 (there -log alpha is +inf and the gradient of alpha is exactly 0 already;
    like CE / KL at q = 0, the gradient stays finite).  NaN stays NaN."""
    return torch.where(alpha == 0, torch.zeros((), dtype=alpha.dtype, device=alpha.device), -1.0 / alpha)


def token_divergence_ref(draft: torch.Tensor, target: torch.Tensor, kind: str, temperature: float,
                          need_grad: bool):
    """[N, V] draft/target -> (values [N], gradient [N, V] in draft's dtype | None).

    The torch path of `autograd.token_divergence_rows` (which documents the math and the
    special values): rows in chunks of `chunk_rows`, fp32 arithmetic (float64 for float64
    inputs, whose values are then float64 too).
    """
    N, V = draft.shape
    acc = torch.float64 if torch.float64 in (draft.dtype, target.dtype) else torch.float32
    values = torch.empty(N, dtype=acc, device=draft.device)
    grad = torch.empty_like(draft, memory_format=torch.contiguous_format) if need_grad else None
    step = chunk_rows(N, V, acc)
    for r0 in range(0, N, step):
        r1 = min(N, r0 + step)
        values[r0:r1] = _divergence_chunk(draft[r0:r1], target[r0:r1], kind, temperature,
                                          None if grad is None else grad[r0:r1])
    return values, grad


def scale_rows_(grad: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """In place: ``grad[n] *= scale[n]``, and rows with ``scale[n] == 0`` exactly 0 (even where
    ``grad`` holds NaN: masked garbage never poisons a gradient).  The backward of
    `autograd.token_divergence_rows`; every backend's version gives these bits."""
    go = scale.reshape(-1, 1)
    return grad.mul_(go).masked_fill_(go == 0, 0)
