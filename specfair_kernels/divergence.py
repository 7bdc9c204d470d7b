"""Per-row drafter-verifier divergence with a gradient computed in the forward pass.

`token_divergence_rows` is what `api.token_divergence` calls after validation.  For rows
n of ``draft`` (d) and ``target`` (t), both ``[N, V]``, with temperature T::

    p = softmax(t / T)   (verifier / target: a constant, never receives a gradient)
    q = softmax(d / T)   (drafter: differentiable)

    "ce"    = -sum_i p_i log q_i          d/dd = (q - p) / T
    "kl"    = sum_i p_i (log p_i - log q_i)   d/dd = (q - p) / T
    "alpha" = sum_i min(p_i, q_i)          d/dd_k = ([q_k < p_k] q_k - q_k S) / T,
                                               S = sum_{i: q_i < p_i} q_i
    "tv"    = 1/2 sum_i |p_i - q_i|        d/dd = -(d alpha / dd)   (tv = 1 - alpha)

At a tie q_k = p_k alpha and tv are not differentiable; the subgradient above takes
[q_k < p_k] = 0 there.

Special values (every backend)
------------------------------
* ``-inf`` logits are masked entries (probability 0); no 0 * inf NaN arises from them.
  Where some p_i > 0 meets q_i = 0 (target finite, draft -inf), CE and KL are ``+inf``
  (exactly: "p_i > 0" means the target logit is finite, even if p_i underflows); their
  gradient stays finite, (q - p) / T.  alpha and tv are always finite.
* A row holding NaN or +inf in either logits, or whose draft or target logits are all
  -inf (no distribution), gets a NaN value and a NaN gradient row.  The gradient of a
  row whose incoming gradient is exactly 0 (e.g. masked out by ``api.token_divergence``)
  is exactly 0, even for such a row: masked garbage never poisons the gradient.

Memory and speed (benchmark notes)
----------------------------------
* Forward returns fp32 values ``[N]`` (float64 for float64 inputs, torch backend; used
  for gradcheck).  No fp32 copy of the whole ``[N, V]`` logits or probabilities is made.
* When ``draft`` requires grad (and grad mode is on) the forward also writes the local
  gradient ``d value_n / d draft_n`` as one ``[N, V]`` tensor in draft's dtype, and that
  is the only thing saved for backward (nothing of ``target``, no probabilities).  With
  grad off, nothing is allocated besides the values.
* Backward scales the saved gradient by ``grad_output`` **in place** and returns it,
  so backward allocates nothing (the tensor becomes / is added to ``draft.grad``).
  Consequence: a graph through this op can be backpropagated **once**; a second backward
  through the same graph (``retain_graph=True`` then backward again, or
  ``torch.autograd.gradcheck``) raises a RuntimeError unless the op was called with
  ``inplace_backward=False``, which makes backward out of place (one extra ``[N, V]``
  allocation per backward).  Double backward (create_graph) is not supported.
* Torch backend ("torch", and "cpp" which maps to it for now): rows are processed in
  chunks whose fp32 temporaries (about `TEMPS_PER_ELEMENT` fp32-sized tensors of
  ``[rows, V]``) stay under `CHUNK_BYTES` (32 MiB), or one row at a time when a single
  row exceeds it (then ``TEMPS_PER_ELEMENT * V * 4`` bytes).  Traffic: one read of both
  logits per chunk plus the gradient write.
* Triton backend (`ops.divergence`): one program per row; pass 1 streams both logits
  once (online max / sum-exp, and the CE/KL sums); pass 2 re-reads them for the
  gradient (CE/KL) or the alpha/tv sums; alpha/tv with a gradient needs pass 3 (the
  gradient needs S, a full-row sum).  Reads per row: CE/KL values 1x, CE/KL + grad 2x,
  alpha/tv values 2x, alpha/tv + grad 3x both logits; the gradient is written once.
  Only O(BLOCK) registers per program; no temporaries in global memory.
"""
from __future__ import annotations

import torch

KINDS = ("ce", "kl", "tv", "alpha")
CHUNK_BYTES = 32 * 2**20
"""Bound on the fp32 (or float64) temporaries of one chunk of the torch path."""
TEMPS_PER_ELEMENT = 8
"""Upper bound on live ``[rows, V]`` accumulation-dtype temporaries in `_torch_chunk`
(counted generously; bool masks count as whole elements)."""


# --- torch path ------------------------------------------------------------------------

def chunk_rows(n_rows: int, vocab: int, acc_dtype: torch.dtype = torch.float32) -> int:
    """Rows per chunk so that ``TEMPS_PER_ELEMENT * rows * vocab`` accumulation-dtype
    elements fit in `CHUNK_BYTES` (at least one row, at most ``n_rows``)."""
    elem = torch.empty((), dtype=acc_dtype).element_size()
    per_row = TEMPS_PER_ELEMENT * max(vocab, 1) * elem
    return max(1, min(max(n_rows, 1), CHUNK_BYTES // per_row))


def _torch_chunk(d: torch.Tensor, t: torch.Tensor, kind: str, temperature: float,
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
    nan = torch.full((), float("nan"), dtype=acc, device=d.device)
    zero = torch.zeros((), dtype=acc, device=d.device)

    if kind in ("ce", "kl"):
        fin_p = logp > float("-inf")  # p_i > 0 in exact arithmetic
        fin_q = logq > float("-inf")
        infinite = (fin_p & ~fin_q).any(-1)
        both = fin_p & fin_q
        del fin_p, fin_q
        if kind == "ce":
            val = -torch.where(both, p * logq, zero).sum(-1)
        else:
            val = torch.where(both, p * (logp - logq), zero).sum(-1)
        del both
        val = torch.where(infinite, float("inf"), val)
        if grad_out is not None:
            del logp, logq
            g = q.sub_(p).div_(temperature)  # (q - p) / T, reusing q's storage
    else:
        alpha = torch.minimum(p, q).sum(-1)
        val = alpha if kind == "alpha" else 0.5 * (p - q).abs_().sum(-1)
        if grad_out is not None:
            del logp, logq
            qlt = torch.where(q < p, q, zero)  # [q_k < p_k] q_k
            s = qlt.sum(-1, keepdim=True)
            g = qlt.sub_(q.mul_(s)).div_(temperature if kind == "alpha" else -temperature)
    if grad_out is not None:
        g.masked_fill_(bad.unsqueeze(-1), float("nan"))
        grad_out.copy_(g)
    return torch.where(bad, nan, val)


def _torch_rows(draft, target, kind, temperature, need_grad):
    """Chunked pure-torch implementation -> (values [N], grad [N, V] in draft's dtype | None)."""
    N, V = draft.shape
    acc = torch.float64 if torch.float64 in (draft.dtype, target.dtype) else torch.float32
    out_dtype = torch.float64 if acc == torch.float64 else torch.float32
    values = torch.empty(N, dtype=out_dtype, device=draft.device)
    grad = torch.empty_like(draft, memory_format=torch.contiguous_format) if need_grad else None
    step = chunk_rows(N, V, acc)
    for r0 in range(0, N, step):
        r1 = min(N, r0 + step)
        values[r0:r1] = _torch_chunk(draft[r0:r1], target[r0:r1], kind, temperature,
                                     None if grad is None else grad[r0:r1])
    return values, grad


# --- dispatch + autograd ---------------------------------------------------------------

def _implementation(backend: str):
    if backend in ("torch", "cpp"):
        # "cpp": the C++ extension has no divergence kernel yet; the torch path stands in.
        return _torch_rows
    if backend == "triton":
        from .ops import divergence as ops_divergence  # lazy: decorating needs TRITON_INTERPRET set first

        return ops_divergence.token_divergence_rows
    raise ValueError(f"backend must be one of 'triton', 'cpp', 'torch'; got {backend!r}")


class _RowDivergence(torch.autograd.Function):
    """values = f(draft); the local gradient is computed by the forward and kept on ctx."""

    @staticmethod
    def forward(ctx, draft, target, kind, temperature, backend, inplace_backward):
        values, grad = _implementation(backend)(draft, target, kind, temperature, True)
        ctx.grad = grad
        ctx.inplace = inplace_backward
        return values

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_values):
        if ctx.grad is None:
            raise RuntimeError(
                "token_divergence: this graph was already backpropagated once; the saved gradient "
                "is scaled in place by backward and released.  Call the op with "
                "inplace_backward=False to backpropagate through it more than once.")
        go = grad_values.unsqueeze(-1)
        if ctx.inplace:
            g = ctx.grad
            ctx.grad = None  # released: the returned tensor is the only reference left
            g.mul_(go)
        else:
            g = (ctx.grad * go).to(ctx.grad.dtype)
        # A row with zero incoming gradient gets exactly 0 even where its local gradient is
        # NaN (garbage logits under a mask).  masked_fill_ only writes the masked rows.
        g.masked_fill_(go == 0, 0)
        return g, None, None, None, None, None


def token_divergence_rows(backend: str, draft: torch.Tensor, target: torch.Tensor, kind: str,
                          temperature: float, *, inplace_backward: bool = True) -> torch.Tensor:
    """Per-row divergence of q = softmax(draft / T) from p = softmax(target / T).

    Parameters
    ----------
    backend : {"triton", "cpp", "torch"}
        "torch": chunked pure torch (the reference).  "cpp": the C++ extension has no
        divergence kernel yet, so the torch path stands in on the CPU.  "triton":
        `ops.divergence` (CUDA, or CPU tensors under TRITON_INTERPRET=1).
    draft, target : [N, V] float32 | bfloat16 | float16 (float64 too, for gradcheck)
        Already validated by the caller; same shape and device.
    kind : {"ce", "kl", "tv", "alpha"}
    temperature : float > 0
    inplace_backward : bool
        Scale the saved gradient in place in backward (default; single backward only).

    Returns
    -------
    torch.Tensor [N]
        float32 (float64 for float64 inputs on the torch path); differentiable w.r.t.
        ``draft`` only.  See the module docstring for special values and memory.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    target = target.detach()
    if torch.is_grad_enabled() and draft.requires_grad:
        return _RowDivergence.apply(draft, target, kind, float(temperature), backend, inplace_backward)
    values, _ = _implementation(backend)(draft.detach(), target, kind, float(temperature), False)
    return values
