"""Triton kernel for `specfair_kernels.divergence` (semantics and docs: that module).

One program per row, looping over the vocabulary in tiles of BLOCK, fp32 accumulation
for every input dtype, int64 row offsets:

* pass 1 (always): online max / sum-exp of both tempered logits a = t/T (target, p)
  and b = d/T (draft, q); for CE the sum  sum_i e^{a_i - m_a} (b_i - m_b), for KL the
  sum  sum_i e^{a_i - m_a} ((a_i - m_a) - (b_i - m_b)), both over entries where a and
  b are finite, rescaled whenever a running max moves; flags for NaN/+inf and for
  "target finite where draft is -inf" (CE = KL = +inf).
      CE = log s_b - t / s_a          KL = w / s_a - log s_a + log s_b
* pass 2 (gradient, or alpha/tv): re-reads the row with both normalisers known; CE/KL
  write (q - p)/T; alpha/tv accumulate sum min(p, q), sum |p - q| and
  S = sum_{q<p} q.
* pass 3 (alpha/tv gradient only): writes ([q<p] q - q S)/T (negated for tv).

V is a compile-time constant: the vocabulary is fixed per model, so this costs one
compilation per vocabulary size, and it keeps the tile loop bound a Python int under
TRITON_INTERPRET=1 (the interpreter cannot range() over a runtime int argument with
NumPy >= 2.4).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

KIND_CE, KIND_KL, KIND_TV, KIND_ALPHA = 0, 1, 2, 3
KIND_CODES = {"ce": KIND_CE, "kl": KIND_KL, "tv": KIND_TV, "alpha": KIND_ALPHA}
MIN_BLOCK = 16
MAX_BLOCK = 2048
"""Largest tile.  About 8 elements per thread per tensor (BLOCK / (32 * num_warps)) keeps
the kernel near 64-80 registers/thread on sm_90 (ptxas, no spills), several programs per
SM; BLOCK=4096 with 8 warps needed 165 registers (one program per SM).  Not yet timed."""


@triton.jit
def _probs_tile(t_row, d_row, cols, inb, temperature, lse_a, lse_b):
    """p and q on one vocabulary tile, from the row normalisers of pass 1."""
    b = tl.load(d_row + cols, mask=inb, other=float("-inf")).to(tl.float32) / temperature
    a = tl.load(t_row + cols, mask=inb, other=float("-inf")).to(tl.float32) / temperature
    return tl.exp(a - lse_a), tl.exp(b - lse_b)


@triton.jit
def _divergence_rows_kernel(
    draft_ptr,    # [N, V] fp32 | bf16 | fp16, contiguous (drafter logits, q)
    target_ptr,   # [N, V] fp32 | bf16 | fp16, contiguous (verifier logits, p)
    value_ptr,    # [N] fp32 out
    grad_ptr,     # [N, V] draft's dtype out, contiguous (unused unless NEED_GRAD)
    temperature,  # fp32 scalar > 0
    V: tl.constexpr, KIND: tl.constexpr, NEED_GRAD: tl.constexpr, BLOCK: tl.constexpr,
):
    NEG: tl.constexpr = float("-inf")
    POS: tl.constexpr = float("inf")
    row = tl.program_id(0).to(tl.int64)
    d_row = draft_ptr + row * V
    t_row = target_ptr + row * V
    g_row = grad_ptr + row * V
    lane = tl.arange(0, BLOCK)

    # ---- pass 1: normalisers (+ CE/KL sums) --------------------------------------
    m_a = tl.full((), NEG, tl.float32)  # running max (raw: -inf until a finite entry)
    m_b = tl.full((), NEG, tl.float32)
    s_a = tl.zeros((), tl.float32)      # sum e^{a - safe(m_a)}
    s_b = tl.zeros((), tl.float32)
    acc = tl.zeros((), tl.float32)      # CE: t, KL: w (see module docstring)
    n_bad = tl.zeros((), tl.int32)      # NaN / +inf entries
    n_inf = tl.zeros((), tl.int32)      # target finite where draft is -inf
    n_diff = tl.zeros((), tl.int32)     # entries where the two rows' logits differ (alpha/tv)
    for start in range(0, V, BLOCK):
        cols = start + lane
        inb = cols < V
        b = tl.load(d_row + cols, mask=inb, other=NEG).to(tl.float32) / temperature
        a = tl.load(t_row + cols, mask=inb, other=NEG).to(tl.float32) / temperature
        n_bad += tl.sum(((a != a) | (b != b) | (a == POS) | (b == POS)).to(tl.int32), 0)
        ma_new = tl.maximum(m_a, tl.max(a, 0))
        mb_new = tl.maximum(m_b, tl.max(b, 0))
        ma_old_s = tl.where(m_a == NEG, 0.0, m_a)
        mb_old_s = tl.where(m_b == NEG, 0.0, m_b)
        ma_s = tl.where(ma_new == NEG, 0.0, ma_new)
        mb_s = tl.where(mb_new == NEG, 0.0, mb_new)
        scale_a = tl.exp(m_a - ma_s)  # 0 while nothing finite was seen
        scale_b = tl.exp(m_b - mb_s)
        ea = tl.exp(a - ma_s)         # 0 at -inf (and at masked lanes)
        eb = tl.exp(b - mb_s)
        if KIND == 0 or KIND == 1:
            both = (a > NEG) & (b > NEG)
            n_inf += tl.sum(((a > NEG) & (b == NEG)).to(tl.int32), 0)
            if KIND == 0:  # t = sum e^{a - m_a} (b - m_b)
                acc = scale_a * (acc - (mb_s - mb_old_s) * s_a) \
                    + tl.sum(tl.where(both, ea * (b - mb_s), 0.0), 0)
            else:          # w = sum e^{a - m_a} ((a - m_a) - (b - m_b))
                acc = scale_a * (acc + ((mb_s - mb_old_s) - (ma_s - ma_old_s)) * s_a) \
                    + tl.sum(tl.where(both, ea * ((a - ma_s) - (b - mb_s)), 0.0), 0)
        if KIND >= 2:
            n_diff += tl.sum((a != b).to(tl.int32), 0)
        s_a = s_a * scale_a + tl.sum(ea, 0)
        s_b = s_b * scale_b + tl.sum(eb, 0)
        m_a = ma_new
        m_b = mb_new

    row_bad = (n_bad > 0) | (m_a == NEG) | (m_b == NEG)  # no valid distribution
    lse_a = tl.where(m_a == NEG, 0.0, m_a) + tl.log(s_a)
    lse_b = tl.where(m_b == NEG, 0.0, m_b) + tl.log(s_b)
    log_sa = tl.log(s_a)
    log_sb = tl.log(s_b)

    # Identical rows (p = q: the optimum of alpha and tv) take the subgradient 0, as the
    # float64 reference does.  On sm_90 the two normalisers of identical rows were seen to
    # differ in the last bit, and "q < p" then held at scattered entries, giving a gradient
    # of about 1e-2 where the true one is 0.
    differ = n_diff > 0

    # ---- pass 2: gradient (CE/KL) or alpha/tv sums ----------------------------------
    s_min = tl.zeros((), tl.float32)
    s_abs = tl.zeros((), tl.float32)
    s_qlt = tl.zeros((), tl.float32)
    if NEED_GRAD or KIND >= 2:
        for start in range(0, V, BLOCK):
            cols = start + lane
            inb = cols < V
            p, q = _probs_tile(t_row, d_row, cols, inb, temperature, lse_a, lse_b)
            if KIND >= 2:
                s_min += tl.sum(tl.where(inb, tl.minimum(p, q), 0.0), 0)
                s_abs += tl.sum(tl.where(inb, tl.abs(p - q), 0.0), 0)
                s_qlt += tl.sum(tl.where((q < p) & differ, q, 0.0), 0)
            else:
                if NEED_GRAD:
                    g = (q - p) / temperature
                    g = tl.where(row_bad, float("nan"), g)
                    tl.store(g_row + cols, g.to(grad_ptr.dtype.element_ty), mask=inb)

    # ---- pass 3: alpha/tv gradient (needs S = s_qlt) ---------------------------------
    if NEED_GRAD and KIND >= 2:
        for start in range(0, V, BLOCK):
            cols = start + lane
            inb = cols < V
            p, q = _probs_tile(t_row, d_row, cols, inb, temperature, lse_a, lse_b)
            g = (tl.where((q < p) & differ, q, 0.0) - q * s_qlt) / temperature
            if KIND == 2:
                g = -g
            g = tl.where(row_bad, float("nan"), g)
            tl.store(g_row + cols, g.to(grad_ptr.dtype.element_ty), mask=inb)

    # ---- value ------------------------------------------------------------------------
    if KIND == 0:
        val = log_sb - acc / s_a
    elif KIND == 1:
        val = acc / s_a - log_sa + log_sb
    elif KIND == 2:
        val = 0.5 * s_abs
    else:
        val = s_min
    if KIND <= 1:
        val = tl.where(n_inf > 0, POS, val)
    val = tl.where(row_bad, float("nan"), val)
    tl.store(value_ptr + row, val)


def _launch_config(V: int, block: int | None = None) -> tuple[int, int]:
    """(BLOCK, num_warps): the whole row in one tile up to MAX_BLOCK, else MAX_BLOCK tiles."""
    if block is None:
        block = min(MAX_BLOCK, max(MIN_BLOCK, triton.next_power_of_2(V)))
    if block & (block - 1) or block < MIN_BLOCK:
        raise ValueError(f"block must be a power of two >= {MIN_BLOCK}, got {block}")
    num_warps = max(1, min(8, block // 256))  # ~8 elements per thread per tensor
    return block, num_warps


def token_divergence_rows(draft: torch.Tensor, target: torch.Tensor, kind: str, temperature: float,
                          need_grad: bool, block: int | None = None):
    """[N, V] draft/target -> (fp32 values [N], gradient [N, V] in draft's dtype | None)."""
    N, V = draft.shape
    draft = draft.contiguous()
    target = target.contiguous()
    values = torch.empty(N, dtype=torch.float32, device=draft.device)
    grad = torch.empty_like(draft) if need_grad else None
    if N == 0:
        return values, grad
    BLOCK, num_warps = _launch_config(V, block)
    _divergence_rows_kernel[(N,)](
        draft, target, values, grad if need_grad else values, float(temperature),
        V=V, KIND=KIND_CODES[kind], NEED_GRAD=bool(need_grad), BLOCK=BLOCK, num_warps=num_warps)
    return values, grad
