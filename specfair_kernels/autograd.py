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
    "neg_log_alpha" = -log alpha          d/dd = -(d alpha / dd) / alpha
                                           (the LK loss of arXiv 2602.23881: TV's gradient
                                           scaled up where acceptance is low)

At a tie q_k = p_k alpha and tv are not differentiable; the subgradient above takes
[q_k < p_k] = 0 there.

Special values (every backend)
------------------------------
* ``-inf`` logits are masked entries (probability 0); no 0 * inf NaN arises from them.
  Where some p_i > 0 meets q_i = 0 (target finite, draft -inf), CE and KL are ``+inf``
  (exactly: "p_i > 0" means the target logit is finite, even if p_i underflows); their
  gradient stays finite, (q - p) / T.  alpha and tv are always finite.  neg_log_alpha is
  ``+inf`` where alpha = 0 (disjoint supports); its gradient there is 0 (alpha's is).
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
* Backward scales the saved gradient by ``grad_output`` **in place** (each backend's
  ``scale_rows_``: one read and one write, rows scaled by 0 set to exactly 0) and returns
  it, so backward allocates nothing (the tensor becomes / is added to ``draft.grad``).
  Consequence: a graph through this op can be backpropagated **once**; a second backward
  through the same graph (``retain_graph=True`` then backward again, or
  ``torch.autograd.gradcheck``) raises a RuntimeError unless the op was called with
  ``inplace_backward=False``, which makes backward out of place (one extra ``[N, V]``
  allocation per backward).  Double backward (create_graph) is not supported.
* Torch backend (`reference.token_divergence_ref`): rows are processed in chunks whose
  fp32 temporaries (about `reference.TEMPS_PER_ELEMENT` fp32-sized tensors of
  ``[rows, V]``) stay under `reference.CHUNK_BYTES` (32 MiB), or one row at a time when a
  single row exceeds it (then ``TEMPS_PER_ELEMENT * V * 4`` bytes).  Traffic: one read of
  both logits per chunk plus the gradient write.
* C++ backend (csrc/divergence.cpp, CPU): one OpenMP thread per row; the logits are read
  from memory once (a scan for the maxima), re-read from L2 for one exp per element and
  tensor into a per-thread buffer of 2 V floats, and the gradient is written once; the
  vectorised loops are compiled for the baseline x86-64 ISA, AVX2 and AVX-512, and the
  widest the CPU runs is used.  fp32 arithmetic for every input dtype (float64 inputs
  are rejected); temperatures whose reciprocal overflows fp32 (T < 2^-128) give NaN rows.
* Triton backend (`ops.divergence`): one program per row (below one row per SM, each
  row's vocabulary is split across programs and a finisher merges them); pass 1 streams
  both logits once (per-thread max / sum-exp, and the CE/KL sums); pass 2 re-reads them for the
  gradient (CE/KL) or the alpha/tv sums; alpha/tv with a gradient needs pass 3 (the
  gradient needs S, a full-row sum).  Reads per row: CE/KL values 1x, CE/KL + grad 2x,
  alpha/tv values 2x, alpha/tv + grad 3x both logits; the gradient is written once.
  Only O(BLOCK) registers per program; temporaries in global memory only for split rows.
"""
from __future__ import annotations

import torch

from . import backends, reference

KINDS = ("ce", "kl", "tv", "alpha", "neg_log_alpha")


# --- dispatch ----------------------------------------------------------------------------

def _cpp_rows(draft, target, kind, temperature, need_grad):
    """csrc/divergence.cpp -> (fp32 values [N], gradient [N, V] in draft's dtype | None)."""
    op = backends.cpp_op("token_divergence")
    if op is None:
        raise RuntimeError(f"the C++ backend is unavailable for token_divergence: "
                           f"{backends.unavailable_reason('cpp', draft.device, 'token_divergence')}")
    values, grad = op(draft, target, kind, temperature, need_grad)
    return values, grad if need_grad else None


def _cpp_scale_rows_(grad, scale):
    backends.cpp_op("scale_rows_")(grad, scale)
    return grad


def _neg_log_alpha(rows, scale_rows_):
    """neg_log_alpha on a kernel that has alpha: its alpha pass, then -log alpha per row and the
    gradient row-scaled in place by -1/alpha (`reference.neg_log_alpha_scale`) with the
    backend's own ``scale_rows_``: one extra in-place pass over the gradient."""
    def run(draft, target, kind, temperature, need_grad):
        if kind != "neg_log_alpha":
            return rows(draft, target, kind, temperature, need_grad)
        alpha, grad = rows(draft, target, "alpha", temperature, need_grad)
        if grad is not None:
            scale_rows_(grad, reference.neg_log_alpha_scale(alpha))
        return -torch.log(alpha), grad
    return run


def _implementation(backend: str):
    """(rows, scale_rows_) of a backend: the forward with its local gradient, and the backward's
    in-place row scaling (``grad[n] *= scale[n]``, exactly 0 where ``scale[n] == 0``).  The C++
    and Triton kernels compute neg_log_alpha from their alpha (`_neg_log_alpha`); the torch
    reference computes it directly."""
    if backend == "torch":
        return reference.token_divergence_ref, reference.scale_rows_
    if backend == "cpp":
        return _neg_log_alpha(_cpp_rows, _cpp_scale_rows_), _cpp_scale_rows_
    if backend == "triton":
        from .ops import divergence as ops_divergence  # lazy: decorating needs TRITON_INTERPRET set first

        return _neg_log_alpha(ops_divergence.launch, ops_divergence.scale_rows_), ops_divergence.scale_rows_
    raise ValueError(f"backend must be one of 'triton', 'cpp', 'torch'; got {backend!r}")


# --- autograd ------------------------------------------------------------------------------

class _RowDivergence(torch.autograd.Function):
    """values = f(draft); the local gradient is computed by the forward and kept on ctx."""

    @staticmethod
    def forward(ctx, draft, target, kind, temperature, backend, inplace_backward):
        rows, ctx.scale_rows_ = _implementation(backend)
        values, grad = rows(draft, target, kind, temperature, True)
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
        # A row with zero incoming gradient gets exactly 0 even where its local gradient is
        # NaN (garbage logits under a mask): scale_rows_ writes 0 there, not 0 * NaN.
        if ctx.inplace:
            g = ctx.grad
            ctx.grad = None  # released: the returned tensor is the only reference left
        else:
            g = ctx.grad.clone()
        return ctx.scale_rows_(g, grad_values), None, None, None, None, None


def token_divergence_rows(backend: str, draft: torch.Tensor, target: torch.Tensor, kind: str,
                          temperature: float, *, inplace_backward: bool = True) -> torch.Tensor:
    """Per-row divergence of q = softmax(draft / T) from p = softmax(target / T).

    Parameters
    ----------
    backend : {"triton", "cpp", "torch"}
        "torch": `reference.token_divergence_ref`, chunked pure torch (the reference).
        "cpp": csrc/divergence.cpp (CPU tensors).  "triton": `ops.divergence` (CUDA, or CPU
        tensors under TRITON_INTERPRET=1).
    draft, target : [N, V] float32 | bfloat16 | float16 (float64 too on the torch path, for gradcheck)
        Already validated by the caller; same shape and device.
    kind : {"ce", "kl", "tv", "alpha", "neg_log_alpha"}
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
    values, _ = _implementation(backend)[0](draft.detach(), target, kind, float(temperature), False)
    return values
