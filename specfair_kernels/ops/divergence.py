"""Triton kernels for `specfair_kernels.autograd` (semantics and docs: that module).

Exponentials are base 2 with the temperature folded in: with c = log2(e) / T and m the
running (raw) maximum, p is proportional to 2^((t - m) c): one FADD, one FMUL and one MUFU
per element, and exactly 2^0 = 1 at the maximum (a one-entry row gives p = q = 1 exactly).
The 1/T of the CE/KL gradient goes into the normaliser: (q - p) / T is
2^((d - m_b) c - log2 s_b - log2 T) - 2^((t - m_a) c - log2 s_a - log2 T).  fp32
accumulation for every dtype, int64 row offsets.

Tiles
-----
A row is walked in 2-D tiles ``[BLOCK / EPT, EPT]``: each thread owns tile rows of EPT
elements, one 16-byte vector of the narrower input (EPT = 8 for 16-bit logits, 4 for fp32),
so maxima and sums along a tile row never leave the thread.  Full tiles are unmasked and
start 16-byte aligned (16-byte loads); the head (the first k0 < EPT elements when V is not
a multiple of EPT) and the tail are masked tiles outside the loops.

Passes (per row)
----------------
* pass 1 (forward): per thread, running maxima m_a (target t), m_b (draft d) and sums
  s_a = sum 2^(a), s_b = sum 2^(b) of the exponents a = (t - m_a) c, b = (d - m_b) c.  The
  tile maximum comes first, so each element costs one exp2 and the sums are rescaled once
  per tile.  CE also sums w = sum 2^a b, KL w = sum 2^a (a - b), and both keep the largest
  gap a - max(b, NEG_BIG): above FLAG_MIN exactly where the target is finite and the
  draft -inf (CE = KL = +inf).  alpha/tv record whether the two rows differ.  One block
  reduction after the loop merges the threads:
      CE = ln2 (log2 s_b - w / s_a)        KL = ln2 (w / s_a - log2 s_a + log2 s_b)
* pass 2 (backward, from the last tile to the first, so that its first tiles are still
  in L2): CE/KL write the gradient (q - p) / T; alpha/tv sum min(p, q) or |p - q|, and
  S = sum_{q<p} q when the gradient is needed.
* pass 3 (forward, alpha/tv gradient only): writes q ([q<p] - S) / T (negated for tv).

Traffic per row, in reads of both logits: CE/KL value 1; CE/KL + gradient 2 and one
gradient write; alpha/tv value 2; alpha/tv + gradient 3 and one gradient write (S is a
sum over the whole row and every gradient element needs it).  Nothing vocabulary-sized
is written besides the gradient.  `work_model` gives the launches and bytes.

Grids
-----
`_divergence_rows_kernel`: one program per row, all passes fused.  With fewer rows than
SMs, one program per row would leave SMs idle, so the full tiles of a row are cut into
NSEG segments of SEG tiles (the last segment also takes the head, the tail and the
remainder): `_split_stats_kernel` writes each segment's merged pass-1 partials (NPART
floats), `_split_sweep_kernel` merges a row's partials, then runs pass 2 on its segment
(CE/KL: gradient and value; alpha/tv: partial sums, NSUM floats), and for alpha/tv
`_split_finish_kernel` merges those sums, writes the value and runs pass 3.  The rows are
few, so their re-reads come from L2.

Backward: `scale_rows_` (`_scale_rows_kernel`, one program per row) scales the saved
gradient by d loss / d value in place, zero rows exactly 0, in one read and one write
(none for rows scaled by 1, a write only for rows scaled by 0).

Tile size and warps: BLOCK = TILE_BYTES / element size (4096 bf16 logits, 16 warps; at
<= 64 registers two programs fit per SM: 32 KiB of loads in flight).  The launcher's ``block`` argument
chooses another (2048: 8 warps; 8192: 32 warps, one program per SM, half the rows in
flight and so about twice the L2 hits of the re-read; see `work_model`).  Loads get the
16-byte alignment hint only when the launcher found every base pointer 16-byte aligned
(ALIGNED).

Special values
--------------
Masked lanes load -inf, neutral everywhere.  A NaN or +inf logit makes its sum NaN (the
exponent is NaN, or inf - inf); an all -inf row has a zero sum; either marks the row bad:
NaN value, and NaN normalisers so that its gradient row is NaN.  Running maxima start at
NEG_BIG (finite), so masked entries never produce inf - inf.  Identical rows (p = q, the
optimum of alpha and tv) reuse the target normaliser for the draft, so q = p bit for bit
and the subgradient is exactly 0 (two normalisers computed apart were seen to differ in
the last bit on sm_90).  Tempered logit differences are assumed below 1e37 in magnitude.

V is a compile-time constant: the vocabulary is fixed per model, so this costs one
compilation per vocabulary size, and it keeps every loop bound a Python int under
TRITON_INTERPRET=1 (the interpreter cannot range() over a runtime int argument with
NumPy >= 2.4).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Globals read inside kernels must be tl.constexpr objects (they also work as numbers on the host).
C = tl.constexpr
KIND_CE, KIND_KL, KIND_TV, KIND_ALPHA = C(0), C(1), C(2), C(3)
KIND_CODES = {"ce": 0, "kl": 1, "tv": 2, "alpha": 3}
LOG2E = C(1.4426950408889634)
LN2 = C(0.6931471805599453)
NEG_BIG = C(-3.4028234663852886e38)
"""-FLT_MAX: the start of every running maximum and the floor of clamped exponents."""
FLAG_MIN = C(1.7014118346046923e38)
"""FLT_MAX / 2.  The exponent gap a - max(b, NEG_BIG) is about FLT_MAX - |a| where the
target is finite and the draft -inf, and far below this where both are finite."""
NPART = C(8)
"""fp32 fields of a segment partial (split path); the eighth is padding."""
P_MA, P_SA, P_MB, P_SB, P_W, P_GAP, P_DIF = (C(i) for i in range(7))
NSUM = C(2)
"""fp32 fields of a segment's pass-2 sums (alpha/tv split path): sum min or |p - q|, S."""
LAST_READ_EVICTION = C("")
"""L2 eviction policy of the last read of the logits: "" or "evict_first" (which would keep
other rows' first reads in L2 longer; worth timing on a GPU).  "" because with a policy
the loads become LDG.E.EF.128, which sass_budget.py's hot-loop parser does not recognise.
Gradient stores are evict_first (written once, never read here)."""
VEC_BYTES = C(16)
"""Bytes per thread per tensor per tile row: one 128-bit load (LDG.E.128)."""

WARP = 32
TILE_BYTES = 8192
"""Bytes of the narrower tensor per tile (BLOCK = 4096 bf16 or 2048 fp32 logits): one
16-byte vector per thread per tensor with MAX_WARPS warps."""
MIN_BLOCK = 16
MAX_BLOCK = 8192
"""Largest tile in elements (tests lower it to run several tiles on tiny rows)."""
MAX_WARPS = 32
"""Warps per program = tile rows / 32, at most this (the `block` argument chooses)."""
MIN_SEG_TILES = 4
"""Fewest full tiles per program in the split path (below that, merging dominates)."""
PROGRAMS_PER_SM = 2
"""Programs the split path aims for per SM (rows times segments)."""
MAX_SEGMENTS = 64
"""Largest NSEG (a power of two: few compiled variants)."""
INTERPRETER_SMS = 4
"""SM count assumed for CPU tensors under TRITON_INTERPRET=1."""


# --- compile-time geometry (kernels and launcher) ----------------------------------------

@triton.constexpr_function
def _elems_per_thread(bits_a, bits_b):
    """EPT: elements of the narrower dtype in one 16-byte vector."""
    return int(VEC_BYTES) * 8 // min(bits_a, bits_b)


@triton.constexpr_function
def _full_tiles(V, BLOCK, EPT):
    """Unmasked tiles per row; an unaligned row may start up to EPT - 1 elements late."""
    slack = 0 if V % EPT == 0 else EPT - 1
    return max(0, (V - slack) // BLOCK)


@triton.constexpr_function
def _first_edge(V, EPT):
    """Edge tiles are numbered 0 (the head, only when V % EPT != 0), then 1.. (the tail)."""
    return 0 if V % EPT else 1


@triton.constexpr_function
def _end_edge(V, BLOCK, EPT):
    """One past the last edge tile: the tail covers V - NF * BLOCK elements (+ up to EPT - 1)."""
    return 1 - (-(V - _full_tiles(V, BLOCK, EPT) * BLOCK) // BLOCK)


@triton.constexpr_function
def _last_tiles(V, BLOCK, EPT, SEG, NSEG):
    """Full tiles of the last segment (the remainder included)."""
    return _full_tiles(V, BLOCK, EPT) - (NSEG - 1) * SEG


# --- tile helpers --------------------------------------------------------------------------

@triton.jit
def _tile_offsets(BLOCK: tl.constexpr, EPT: tl.constexpr):
    """[BLOCK / EPT, EPT] element offsets: each tile row is EPT contiguous elements."""
    return tl.arange(0, BLOCK // EPT)[:, None] * EPT + tl.arange(0, EPT)[None, :]


@triton.jit
def _load(ptr, mask, EVICT: tl.constexpr):
    """fp32 tile; masked lanes are -inf (probability 0, neutral in every sum)."""
    if mask is None:
        x = tl.load(ptr, eviction_policy=EVICT)
    else:
        x = tl.load(ptr, mask=mask, other=float("-inf"), eviction_policy=EVICT)
    return x.to(tl.float32)


@triton.jit
def _row_pointers(draft_ptr, target_ptr, grad_ptr, row, V: tl.constexpr, EPT: tl.constexpr,
                 ALIGNED: tl.constexpr):
    """((target, draft, grad) row starts, the same three advanced to the first 16-byte
    aligned element), and k0, the number of elements before it."""
    base = row.to(tl.int64) * V
    if V % EPT == 0:
        k0 = 0
    else:
        k0 = ((EPT - base % EPT) % EPT).to(tl.int32)
    al = base + k0
    t_al = target_ptr + al
    d_al = draft_ptr + al
    g_al = grad_ptr + al
    if ALIGNED:  # the launcher checked that every base pointer is 16-byte aligned
        t_al = tl.multiple_of(t_al, VEC_BYTES)
        d_al = tl.multiple_of(d_al, VEC_BYTES)
        g_al = tl.multiple_of(g_al, VEC_BYTES)
    return (target_ptr + base, draft_ptr + base, grad_ptr + base, t_al, d_al, g_al), k0


@triton.jit
def _edge(i, k0, offs, V: tl.constexpr, BLOCK: tl.constexpr, EPT: tl.constexpr):
    """Positions and mask of edge tile i.  0 is the head [0, k0), relative to the row start;
    1.. the tail, relative to the aligned start (the row start plus k0)."""
    if i == 0:
        pos = offs
        mask = (offs < k0) & (offs < V)
    else:
        start = (_full_tiles(V, BLOCK, EPT) + i - 1) * BLOCK
        pos = start + offs
        if V % EPT == 0:
            # Whole 16-byte vectors are in or out: a per-vector mask keeps the loads vectorised.
            vec = start + tl.arange(0, BLOCK // EPT)[:, None] * EPT
            mask = tl.broadcast_to(vec < V, (BLOCK // EPT, EPT))
        else:
            mask = pos < V - k0
    return pos, mask


@triton.jit
def _rescale(acc, ma_new, mb_new, c, KIND: tl.constexpr):
    """Pass-1 accumulators (per thread or per segment) re-expressed at new raw maxima.
    The shifts are clamped at NEG_BIG so that a maximum still at NEG_BIG never gives
    inf * 0."""
    m_a, s_a, m_b, s_b, w, gap, dif = acc
    da = tl.maximum((m_a - ma_new) * c, NEG_BIG)
    db = tl.maximum((m_b - mb_new) * c, NEG_BIG)
    sc_a = tl.exp2(da)
    if KIND == KIND_CE:    # w = sum 2^(a - m_a) (b - m_b), tempered units
        w = sc_a * (w + db * s_a)
    elif KIND == KIND_KL:  # w = sum 2^(a - m_a) ((a - m_a) - (b - m_b))
        w = sc_a * (w + (da - db) * s_a)
    return ma_new, s_a * sc_a, mb_new, s_b * tl.exp2(db), w, gap, dif


@triton.jit
def _stats_init(R: tl.constexpr):
    """Empty pass-1 accumulators (m_a, s_a, m_b, s_b, w, gap, dif), each [R]."""
    neg = tl.full((R,), NEG_BIG, tl.float32)
    zero = tl.zeros((R,), tl.float32)
    return neg, zero, neg, zero, zero, tl.full((R,), float("-inf"), tl.float32), zero


@triton.jit
def _stats_tile(acc, ta, db, c, KIND: tl.constexpr):
    """Adds a [R, EPT] tile of target (ta) and draft (db) logits to the accumulators.
    Exponents are (x - m) c with m the raw maximum: exactly 0 at the maximum, which keeps
    degenerate rows (V = 1) exact."""
    m_a, s_a, m_b, s_b, w, gap, dif = _rescale(acc, tl.maximum(acc[0], tl.max(ta, 1)),
                                               tl.maximum(acc[2], tl.max(db, 1)), c, KIND)
    arg_a = (ta - m_a[:, None]) * c
    arg_b = (db - m_b[:, None]) * c
    e_a = tl.exp2(arg_a)
    s_a += tl.sum(e_a, 1)
    s_b += tl.sum(tl.exp2(arg_b), 1)
    if KIND == KIND_CE or KIND == KIND_KL:
        # Clamped, a -inf draft exponent is finite: no 0 * inf where p = 0, and a gap
        # of about FLT_MAX where p > 0.
        arg_b = tl.maximum(arg_b, NEG_BIG)
        if KIND == KIND_CE:
            w += tl.sum(e_a * arg_b, 1)
            gap = tl.maximum(gap, tl.max(arg_a - arg_b, 1))
        else:
            diff = tl.maximum(arg_a, NEG_BIG) - arg_b
            w += tl.sum(e_a * diff, 1)
            gap = tl.maximum(gap, tl.max(diff, 1))
    else:
        dif = tl.maximum(dif, tl.max((ta != db).to(tl.float32), 1))
    return m_a, s_a, m_b, s_b, w, gap, dif


@triton.jit
def _stats_pass(acc, t_row, d_row, t_al, d_al, k0, j0, offs, c, V: tl.constexpr,
                BLOCK: tl.constexpr, EPT: tl.constexpr, NT: tl.constexpr,
                EDGES: tl.constexpr, KIND: tl.constexpr):
    """Pass 1 over NT full tiles from tile j0, then the edge tiles when EDGES."""
    for j in range(NT):
        o = (j0 + j) * BLOCK + offs
        acc = _stats_tile(acc, _load(t_al + o, None, ""), _load(d_al + o, None, ""), c, KIND)
    if EDGES:
        for i in tl.static_range(_first_edge(V, EPT), _end_edge(V, BLOCK, EPT)):
            pos, mask = _edge(i, k0, offs, V, BLOCK, EPT)
            if i == 0:
                acc = _stats_tile(acc, _load(t_row + pos, mask, ""), _load(d_row + pos, mask, ""), c, KIND)
            else:
                acc = _stats_tile(acc, _load(t_al + pos, mask, ""), _load(d_al + pos, mask, ""), c, KIND)
    return acc


@triton.jit
def _merge(acc, c, KIND: tl.constexpr):
    """Accumulators [R] (threads, or segments) -> one row's (m_a, s_a, m_b, s_b, w, gap, dif)."""
    acc = _rescale(acc, tl.max(acc[0], 0), tl.max(acc[2], 0), c, KIND)
    return (acc[0], tl.sum(acc[1], 0), acc[2], tl.sum(acc[3], 0), tl.sum(acc[4], 0),
            tl.max(acc[5], 0), tl.max(acc[6], 0))


@triton.jit
def _normalisers(stats, KIND: tl.constexpr):
    """(m_a, log2 s_a, m_b, log2 s_b), so that p = 2^((t - m_a) c - log2 s_a); the logs are
    NaN for a row without a distribution, and q's are p's for identical rows (alpha/tv)."""
    m_a, s_a, m_b, s_b, w, gap, dif = stats
    bad = (s_a != s_a) | (s_b != s_b) | (s_a == 0.0) | (s_b == 0.0)
    ls_a = tl.where(bad, float("nan"), tl.log2(s_a))
    ls_b = tl.where(bad, float("nan"), tl.log2(s_b))
    if KIND == KIND_TV or KIND == KIND_ALPHA:
        m_b = tl.where(dif > 0.0, m_b, m_a)
        ls_b = tl.where(dif > 0.0, ls_b, ls_a)
    return (m_a, ls_a, m_b, ls_b), bad


@triton.jit
def _value(stats, bad, s_pq, KIND: tl.constexpr):
    """Row value from the merged pass-1 stats and (alpha/tv) the pass-2 sum s_pq."""
    m_a, s_a, m_b, s_b, w, gap, dif = stats
    if KIND == KIND_CE:
        val = LN2 * (tl.log2(s_b) - w / s_a)
    elif KIND == KIND_KL:
        val = LN2 * (w / s_a - tl.log2(s_a) + tl.log2(s_b))
    elif KIND == KIND_TV:
        val = 0.5 * s_pq
    else:
        val = s_pq
    if KIND == KIND_CE or KIND == KIND_KL:
        val = tl.where(gap >= FLAG_MIN, float("inf"), val)
    return tl.where(bad, float("nan"), val)


@triton.jit
def _sweep_tile(sums, g_ptr, ta, db, c, norms, mask, PASS: tl.constexpr, KIND: tl.constexpr,
                NEED_GRAD: tl.constexpr):
    """One tile of pass 2 or 3; norms = (m_a, x_a, m_b, x_b, hi, lo) gives
    2^((t - m_a) c - x_a) and 2^((d - m_b) c - x_b).  Pass 2 of CE/KL writes (q - p) / T
    (x = log2 s + log2 T); pass 2 of alpha/tv (x = log2 s) adds min(p, q) or |p - q| and
    [q<p] q to the per-thread sums; pass 3 writes q (hi if q < p else lo)."""
    m_a, x_a, m_b, x_b, hi, lo = norms
    p = tl.exp2((ta - m_a) * c - x_a)
    q = tl.exp2((db - m_b) * c - x_b)
    if PASS == 2 and KIND <= KIND_KL:
        tl.store(g_ptr, (q - p).to(g_ptr.dtype.element_ty), mask=mask, eviction_policy="evict_first")
    elif PASS == 3:
        g = q * tl.where(q < p, hi, lo)
        tl.store(g_ptr, g.to(g_ptr.dtype.element_ty), mask=mask, eviction_policy="evict_first")
    else:
        s_pq, s_lt = sums
        if KIND == KIND_ALPHA:
            s_pq += tl.sum(tl.minimum(p, q), 1)
        else:
            s_pq += tl.sum(tl.abs(p - q), 1)
        if NEED_GRAD:
            s_lt += tl.sum(tl.where(q < p, q, 0.0), 1)
        sums = s_pq, s_lt
    return sums


@triton.jit
def _sweep_edges(sums, ptrs, k0, offs, c, norms, V: tl.constexpr, BLOCK: tl.constexpr,
                 EPT: tl.constexpr, PASS: tl.constexpr, KIND: tl.constexpr, NEED_GRAD: tl.constexpr):
    t_row, d_row, g_row, t_al, d_al, g_al = ptrs
    for i in tl.static_range(_first_edge(V, EPT), _end_edge(V, BLOCK, EPT)):
        pos, mask = _edge(i, k0, offs, V, BLOCK, EPT)
        if i == 0:
            sums = _sweep_tile(sums, g_row + pos, _load(t_row + pos, mask, ""), _load(d_row + pos, mask, ""),
                               c, norms, mask, PASS, KIND, NEED_GRAD)
        else:
            sums = _sweep_tile(sums, g_al + pos, _load(t_al + pos, mask, ""), _load(d_al + pos, mask, ""),
                               c, norms, mask, PASS, KIND, NEED_GRAD)
    return sums


@triton.jit
def _sweep(ptrs, k0, j0, offs, c, norms, V: tl.constexpr, BLOCK: tl.constexpr,
           EPT: tl.constexpr, NT: tl.constexpr, EDGES: tl.constexpr, PASS: tl.constexpr,
           KIND: tl.constexpr, NEED_GRAD: tl.constexpr):
    """Pass 2 (backward: edges, then full tiles j0 + NT - 1 .. j0) or pass 3 (forward:
    full tiles, then edges).  Returns the per-thread alpha/tv sums of pass 2."""
    t_row, d_row, g_row, t_al, d_al, g_al = ptrs
    EVICT: tl.constexpr = "" if (PASS == 2 and KIND >= KIND_TV and NEED_GRAD) else LAST_READ_EVICTION
    R: tl.constexpr = BLOCK // EPT
    sums = tl.zeros((R,), tl.float32), tl.zeros((R,), tl.float32)
    if PASS == 2 and EDGES:
        sums = _sweep_edges(sums, ptrs, k0, offs, c, norms, V, BLOCK, EPT, PASS, KIND, NEED_GRAD)
    for jj in range(NT):
        if PASS == 2:
            o = (j0 + NT - 1 - jj) * BLOCK + offs
        else:
            o = (j0 + jj) * BLOCK + offs
        sums = _sweep_tile(sums, g_al + o, _load(t_al + o, None, EVICT), _load(d_al + o, None, EVICT),
                           c, norms, None, PASS, KIND, NEED_GRAD)
    if PASS == 3 and EDGES:
        sums = _sweep_edges(sums, ptrs, k0, offs, c, norms, V, BLOCK, EPT, PASS, KIND, NEED_GRAD)
    return sums


@triton.jit
def _pass2_norms(norms, temperature, KIND: tl.constexpr):
    """Pass-2 norms; for CE/KL the 1/T of the gradient goes into the exponents."""
    m_a, ls_a, m_b, ls_b = norms
    if KIND <= KIND_KL:
        log2_t = tl.log2(temperature)
        ls_a += log2_t
        ls_b += log2_t
    return m_a, ls_a, m_b, ls_b, 0.0, 0.0


@triton.jit
def _pass3_norms(norms, s_lt, temperature, KIND: tl.constexpr):
    """Pass-3 norms: the gradient is q (1 - S) / T where q < p, else -q S / T (negated for tv)."""
    m_a, ls_a, m_b, ls_b = norms
    if KIND == KIND_TV:
        return m_a, ls_a, m_b, ls_b, (s_lt - 1.0) / temperature, s_lt / temperature
    return m_a, ls_a, m_b, ls_b, (1.0 - s_lt) / temperature, -s_lt / temperature


# --- kernels ---------------------------------------------------------------------------------

@triton.jit
def _divergence_rows_kernel(
    draft_ptr,    # [N, V] fp32 | bf16 | fp16, contiguous (drafter logits, q)
    target_ptr,   # [N, V] fp32 | bf16 | fp16, contiguous (verifier logits, p)
    value_ptr,    # [N] fp32 out
    grad_ptr,     # [N, V] draft's dtype out, contiguous (not touched without NEED_GRAD)
    temperature,  # fp32 scalar > 0
    V: tl.constexpr, KIND: tl.constexpr, NEED_GRAD: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr,
):
    EPT: tl.constexpr = _elems_per_thread(draft_ptr.dtype.element_ty.primitive_bitwidth,
                                          target_ptr.dtype.element_ty.primitive_bitwidth)
    NF: tl.constexpr = _full_tiles(V, BLOCK, EPT)
    row = tl.program_id(0)
    ptrs, k0 = _row_pointers(draft_ptr, target_ptr, grad_ptr, row, V, EPT, ALIGNED)
    t_row, d_row, g_row, t_al, d_al, g_al = ptrs
    offs = _tile_offsets(BLOCK, EPT)
    c = LOG2E / temperature

    acc = _stats_pass(_stats_init(BLOCK // EPT), t_row, d_row, t_al, d_al, k0, 0, offs, c,
                      V, BLOCK, EPT, NF, True, KIND)
    stats = _merge(acc, c, KIND)
    norms, bad = _normalisers(stats, KIND)
    s_pq = 0.0
    if NEED_GRAD or KIND >= KIND_TV:
        sums = _sweep(ptrs, k0, 0, offs, c, _pass2_norms(norms, temperature, KIND), V, BLOCK, EPT, NF, True, 2,
                      KIND, NEED_GRAD)
        if KIND >= KIND_TV:
            s_pq = tl.sum(sums[0], 0)
            if NEED_GRAD:
                _sweep(ptrs, k0, 0, offs, c, _pass3_norms(norms, tl.sum(sums[1], 0), temperature, KIND),
                       V, BLOCK, EPT, NF, True, 3, KIND, NEED_GRAD)
    tl.store(value_ptr + row, _value(stats, bad, s_pq, KIND))


@triton.jit
def _split_stats_kernel(
    draft_ptr,    # [N, V] fp32 | bf16 | fp16, contiguous (drafter logits, q)
    target_ptr,   # [N, V] fp32 | bf16 | fp16, contiguous (verifier logits, p)
    part_ptr,     # [N, NSEG, NPART] fp32 out: merged pass-1 accumulators of each segment
    temperature,  # fp32 scalar > 0
    V: tl.constexpr, KIND: tl.constexpr, BLOCK: tl.constexpr, SEG: tl.constexpr, NSEG: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    EPT: tl.constexpr = _elems_per_thread(draft_ptr.dtype.element_ty.primitive_bitwidth,
                                          target_ptr.dtype.element_ty.primitive_bitwidth)
    pid = tl.program_id(0)
    row = pid // NSEG
    seg = pid % NSEG
    ptrs, k0 = _row_pointers(draft_ptr, target_ptr, draft_ptr, row, V, EPT, ALIGNED)
    t_row, d_row, g_row, t_al, d_al, g_al = ptrs
    offs = _tile_offsets(BLOCK, EPT)
    c = LOG2E / temperature
    acc = _stats_init(BLOCK // EPT)
    if seg < NSEG - 1:
        acc = _stats_pass(acc, t_row, d_row, t_al, d_al, k0, seg * SEG, offs, c, V, BLOCK, EPT, SEG,
                          False, KIND)
    else:
        acc = _stats_pass(acc, t_row, d_row, t_al, d_al, k0, (NSEG - 1) * SEG, offs, c, V, BLOCK, EPT,
                          _last_tiles(V, BLOCK, EPT, SEG, NSEG), True, KIND)
    stats = _merge(acc, c, KIND)
    out = part_ptr + pid * NPART
    for f in tl.static_range(7):
        tl.store(out + f, stats[f])


@triton.jit
def _row_stats(part_ptr, row, c, KIND: tl.constexpr, NSEG: tl.constexpr):
    """Merged pass-1 stats of a row from its NSEG segment partials."""
    at = part_ptr + (row * NSEG + tl.arange(0, NSEG)) * NPART
    acc = (tl.load(at + P_MA), tl.load(at + P_SA), tl.load(at + P_MB), tl.load(at + P_SB),
           tl.load(at + P_W), tl.load(at + P_GAP), tl.load(at + P_DIF))
    return _merge(acc, c, KIND)


@triton.jit
def _split_sweep_kernel(
    draft_ptr,    # [N, V] fp32 | bf16 | fp16, contiguous (drafter logits, q)
    target_ptr,   # [N, V] fp32 | bf16 | fp16, contiguous (verifier logits, p)
    part_ptr,     # [N, NSEG, NPART] fp32: segment partials of _split_stats_kernel
    sums_ptr,     # [N, NSEG, NSUM] fp32 out (alpha/tv): pass-2 sums of each segment
    value_ptr,    # [N] fp32 out (CE/KL)
    grad_ptr,     # [N, V] draft's dtype out (CE/KL with NEED_GRAD)
    temperature,  # fp32 scalar > 0
    V: tl.constexpr, KIND: tl.constexpr, NEED_GRAD: tl.constexpr, BLOCK: tl.constexpr,
    SEG: tl.constexpr, NSEG: tl.constexpr, ALIGNED: tl.constexpr,
):
    """CE/KL: value (segment 0) and, with NEED_GRAD, pass 2 on every segment.
    alpha/tv: pass 2 sums of every segment."""
    EPT: tl.constexpr = _elems_per_thread(draft_ptr.dtype.element_ty.primitive_bitwidth,
                                          target_ptr.dtype.element_ty.primitive_bitwidth)
    pid = tl.program_id(0)
    row = pid // NSEG
    seg = pid % NSEG
    c = LOG2E / temperature
    stats = _row_stats(part_ptr, row, c, KIND, NSEG)
    norms, bad = _normalisers(stats, KIND)
    if KIND <= KIND_KL:
        if seg == 0:
            tl.store(value_ptr + row, _value(stats, bad, 0.0, KIND))
    if NEED_GRAD or KIND >= KIND_TV:
        ptrs, k0 = _row_pointers(draft_ptr, target_ptr, grad_ptr, row, V, EPT, ALIGNED)
        offs = _tile_offsets(BLOCK, EPT)
        norms = _pass2_norms(norms, temperature, KIND)
        if seg < NSEG - 1:
            sums = _sweep(ptrs, k0, seg * SEG, offs, c, norms, V, BLOCK, EPT, SEG, False, 2, KIND, NEED_GRAD)
        else:
            sums = _sweep(ptrs, k0, (NSEG - 1) * SEG, offs, c, norms, V, BLOCK, EPT,
                          _last_tiles(V, BLOCK, EPT, SEG, NSEG), True, 2, KIND, NEED_GRAD)
        if KIND >= KIND_TV:
            tl.store(sums_ptr + pid * NSUM, tl.sum(sums[0], 0))
            tl.store(sums_ptr + pid * NSUM + 1, tl.sum(sums[1], 0))


@triton.jit
def _split_finish_kernel(
    draft_ptr,    # [N, V] fp32 | bf16 | fp16, contiguous (drafter logits, q)
    target_ptr,   # [N, V] fp32 | bf16 | fp16, contiguous (verifier logits, p)
    part_ptr,     # [N, NSEG, NPART] fp32: segment partials of _split_stats_kernel
    sums_ptr,     # [N, NSEG, NSUM] fp32: pass-2 sums of _split_sweep_kernel
    value_ptr,    # [N] fp32 out
    grad_ptr,     # [N, V] draft's dtype out (NEED_GRAD)
    temperature,  # fp32 scalar > 0
    V: tl.constexpr, KIND: tl.constexpr, NEED_GRAD: tl.constexpr, BLOCK: tl.constexpr,
    SEG: tl.constexpr, NSEG: tl.constexpr, ALIGNED: tl.constexpr,
):
    """alpha/tv: value (segment 0) and, with NEED_GRAD, pass 3 on every segment."""
    EPT: tl.constexpr = _elems_per_thread(draft_ptr.dtype.element_ty.primitive_bitwidth,
                                          target_ptr.dtype.element_ty.primitive_bitwidth)
    pid = tl.program_id(0)
    row = pid // NSEG
    seg = pid % NSEG
    c = LOG2E / temperature
    stats = _row_stats(part_ptr, row, c, KIND, NSEG)
    norms, bad = _normalisers(stats, KIND)
    at = sums_ptr + (row * NSEG + tl.arange(0, NSEG)) * NSUM
    if seg == 0:
        tl.store(value_ptr + row, _value(stats, bad, tl.sum(tl.load(at), 0), KIND))
    if NEED_GRAD:
        ptrs, k0 = _row_pointers(draft_ptr, target_ptr, grad_ptr, row, V, EPT, ALIGNED)
        offs = _tile_offsets(BLOCK, EPT)
        norms = _pass3_norms(norms, tl.sum(tl.load(at + 1), 0), temperature, KIND)
        if seg < NSEG - 1:
            _sweep(ptrs, k0, seg * SEG, offs, c, norms, V, BLOCK, EPT, SEG, False, 3, KIND, NEED_GRAD)
        else:
            _sweep(ptrs, k0, (NSEG - 1) * SEG, offs, c, norms, V, BLOCK, EPT,
                   _last_tiles(V, BLOCK, EPT, SEG, NSEG), True, 3, KIND, NEED_GRAD)


@triton.jit
def _scale_rows_kernel(
    grad_ptr,     # [N, V] fp32 | bf16 | fp16, contiguous, in place: the saved local gradient
    scale_ptr,    # [N] fp32: d loss / d value of each row
    V: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr,
):
    """grad[n] *= scale[n], and exactly 0 where scale[n] == 0 (even over NaN): the backward
    of `launch` in one pass.  A row scaled by 1 is not touched and a row
    scaled by 0 is only written."""
    EPT: tl.constexpr = _elems_per_thread(grad_ptr.dtype.element_ty.primitive_bitwidth,
                                          grad_ptr.dtype.element_ty.primitive_bitwidth)
    row = tl.program_id(0)
    s = tl.load(scale_ptr + row)
    ptrs, k0 = _row_pointers(grad_ptr, grad_ptr, grad_ptr, row, V, EPT, ALIGNED)
    if s == 0.0:
        _scale_pass(ptrs[2], ptrs[5], k0, s, V, BLOCK, EPT, True)
    elif s != 1.0:
        _scale_pass(ptrs[2], ptrs[5], k0, s, V, BLOCK, EPT, False)


@triton.jit
def _scale_pass(g_row, g_al, k0, s, V: tl.constexpr, BLOCK: tl.constexpr, EPT: tl.constexpr,
                ZERO: tl.constexpr):
    offs = _tile_offsets(BLOCK, EPT)
    for j in range(_full_tiles(V, BLOCK, EPT)):
        _scale_tile(g_al + j * BLOCK + offs, s, None, ZERO)
    for i in tl.static_range(_first_edge(V, EPT), _end_edge(V, BLOCK, EPT)):
        pos, mask = _edge(i, k0, offs, V, BLOCK, EPT)
        if i == 0:
            _scale_tile(g_row + pos, s, mask, ZERO)
        else:
            _scale_tile(g_al + pos, s, mask, ZERO)


@triton.jit
def _scale_tile(at, s, mask, ZERO: tl.constexpr):
    if ZERO:
        g = tl.zeros(at.shape, tl.float32)
    else:
        g = tl.load(at, mask=mask).to(tl.float32) * s
    tl.store(at, g.to(at.dtype.element_ty), mask=mask)


# --- launcher ------------------------------------------------------------------------------

def _pow2_floor(x: int) -> int:
    return 1 << (max(1, x).bit_length() - 1)


def _plan(N: int, V: int, draft_bytes: int, target_bytes: int, num_sms: int, block: int | None = None) -> dict:
    """Tile (BLOCK elements, EPT per thread row), warps and vocabulary segmentation."""
    ept = _elems_per_thread(8 * draft_bytes, 8 * target_bytes)
    if block is None:
        block = min(MAX_BLOCK, TILE_BYTES // min(draft_bytes, target_bytes),
                    max(MIN_BLOCK, triton.next_power_of_2(V)))
    if block & (block - 1) or block < max(MIN_BLOCK, ept):
        raise ValueError(f"block must be a power of two >= {max(MIN_BLOCK, ept)}, got {block}")
    nf = _full_tiles(V, block, ept)
    nseg = 1
    if N < num_sms:
        nseg = _pow2_floor(min(MAX_SEGMENTS, -(-num_sms * PROGRAMS_PER_SM // N), nf // MIN_SEG_TILES))
    return dict(BLOCK=block, EPT=ept, num_warps=max(1, min(MAX_WARPS, block // ept // WARP)), NF=nf,
                NSEG=nseg, SEG=nf // nseg)


def _launches(N: int, V: int, draft_bytes: int, target_bytes: int, kind: str, need_grad: bool, num_sms: int,
              block: int | None = None, aligned: bool = True) -> list[dict]:
    """The kernels to launch, in order: {"kernel", "constexprs", "num_warps", "programs"}."""
    plan = _plan(N, V, draft_bytes, target_bytes, num_sms, block)
    common = dict(V=V, KIND=KIND_CODES[kind])
    nw = plan["num_warps"]
    if plan["NSEG"] == 1:
        return [dict(kernel="_divergence_rows_kernel", num_warps=nw, programs=N,
                     constexprs=dict(**common, NEED_GRAD=bool(need_grad), BLOCK=plan["BLOCK"], ALIGNED=aligned))]
    seg = dict(BLOCK=plan["BLOCK"], SEG=plan["SEG"], NSEG=plan["NSEG"], ALIGNED=aligned)
    grid = N * plan["NSEG"]
    out = [dict(kernel="_split_stats_kernel", num_warps=nw, programs=grid, constexprs=dict(**common, **seg)),
           dict(kernel="_split_sweep_kernel", num_warps=nw, programs=grid,
                constexprs=dict(**common, NEED_GRAD=bool(need_grad), **seg))]
    if kind in ("tv", "alpha"):
        out.append(dict(kernel="_split_finish_kernel", num_warps=nw, programs=grid,
                        constexprs=dict(**common, NEED_GRAD=bool(need_grad), **seg)))
    return out


_KERNELS = {k.fn.__name__: k for k in (_divergence_rows_kernel, _split_stats_kernel, _split_sweep_kernel,
                                       _split_finish_kernel, _scale_rows_kernel)}


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_SMS


def launch(draft: torch.Tensor, target: torch.Tensor, kind: str, temperature: float,
                          need_grad: bool, block: int | None = None):
    """[N, V] draft/target -> (fp32 values [N], gradient [N, V] in draft's dtype | None).

    ``block`` (a power of two) overrides the tile size in elements; warps = tile rows / 32
    (at most MAX_WARPS), so it is also the knob for the number of warps.
    """
    N, V = draft.shape
    draft = draft.contiguous()
    target = target.contiguous()
    values = torch.empty(N, dtype=torch.float32, device=draft.device)
    grad = torch.empty_like(draft, memory_format=torch.contiguous_format) if need_grad else None
    if N == 0:
        return values, grad
    g = grad if need_grad else draft  # never written without NEED_GRAD
    aligned = all(x.data_ptr() % int(VEC_BYTES) == 0 for x in (draft, target, g))
    launches = _launches(N, V, draft.element_size(), target.element_size(), kind, need_grad,
                         _num_sms(draft.device), block, aligned)
    T = float(temperature)
    nseg = launches[0]["constexprs"].get("NSEG", 1)
    part = torch.empty(N * nseg * int(NPART) if nseg > 1 else 1, dtype=torch.float32, device=draft.device)
    sums = torch.empty(N * nseg * int(NSUM) if nseg > 1 else 1, dtype=torch.float32, device=draft.device)
    args = {
        "_divergence_rows_kernel": (draft, target, values, g, T),
        "_split_stats_kernel": (draft, target, part, T),
        "_split_sweep_kernel": (draft, target, part, sums, values, g, T),
        "_split_finish_kernel": (draft, target, part, sums, values, g, T),
    }
    for launch in launches:
        _KERNELS[launch["kernel"]][(launch["programs"],)](
            *args[launch["kernel"]], **launch["constexprs"], num_warps=launch["num_warps"])
    return values, grad


def scale_rows_(grad: torch.Tensor, scale: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """In place: ``grad[n] *= scale[n]``, rows with ``scale[n] == 0`` set to exactly 0.

    The backward of `launch` (``grad.mul_(go).masked_fill_(go == 0, 0)``, the
    same bits) in one read and one write of the gradient; rows scaled by 1 cost nothing,
    rows scaled by 0 only a write.  ``grad``: contiguous [N, V]; ``scale``: [N] float.
    """
    N, V = grad.shape
    if N == 0:
        return grad
    plan = _plan(N, V, grad.element_size(), grad.element_size(), 0, block)  # one program per row
    scale = scale.reshape(N).to(torch.float32).contiguous()
    _scale_rows_kernel[(N,)](grad, scale, V=V, BLOCK=plan["BLOCK"], ALIGNED=grad.data_ptr() % int(VEC_BYTES) == 0,
                             num_warps=plan["num_warps"])
    return grad


# --- work model (roofline report) --------------------------------------------------------------

L2_BYTES = 50 * 2**20
"""L2 capacity assumed by `work_model` (H100 and H200: 50 MB)."""
RESIDENT_THREADS_PER_SM = 1024
"""Row-kernel threads assumed resident per SM: 65536 registers at <= 64 per thread (every
sm_90 variant, tests/compile_kernels.py).  16 warps: two programs per SM; 32 warps
(block=8192 for bf16): one."""


def work_model(N, V, elem_bytes, kind, need_grad, num_sms=132) -> list[dict]:
    """One dict per launch, in launch order: {"kernel": kernel function name, "constexprs": the
    variant's constexpr dict (as listed in tests/compile_kernels.py), "num_warps": int,
    "programs": grid size, "loops": [{"elements": logits this hot loop processes over the whole
    grid}, ...] in source order, "dram_bytes": bytes that must move to/from DRAM, "l2_bytes":
    re-reads expected to hit L2}.

    "elements" counts the logits of both inputs that the loop's loads bring in (the unit of
    the SASS per-logit counts); edge tiles are not in a loop.  L2 model: the row kernel
    re-reads a row right after reading it, backwards, so the tile k tiles before the row end
    is re-read after 2k tile steps of every resident program; it hits while that traffic
    fits in L2, i.e. for a fraction L2_BYTES / (2 * resident rows * row bytes) of the row.
    The split path's kernels re-read all N rows, which hit while N rows fit in L2.
    Gradient writes and segment partials are DRAM traffic; partial re-reads hit L2.  With
    ``need_grad`` the last launch is the backward's `scale_rows_` (its tile loop is unrolled,
    so it lists no loop): one read and one write of the saved gradient.
    """
    launches = _launches(N, V, elem_bytes, elem_bytes, kind, need_grad, num_sms)
    backward = []
    if need_grad:  # the backward: scale_rows_ reads and writes the saved gradient once
        plan = _plan(N, V, elem_bytes, elem_bytes, 0)
        backward = [dict(kernel="_scale_rows_kernel", num_warps=plan["num_warps"], programs=N, loops=[],
                         constexprs=dict(V=V, BLOCK=plan["BLOCK"], ALIGNED=True), l2_bytes=0,
                         dram_bytes=2 * N * V * elem_bytes + 4 * N)]
    return _forward_work(launches, N, V, elem_bytes, kind, need_grad, num_sms) + backward


def _forward_work(launches, N, V, elem_bytes, kind, need_grad, num_sms) -> list[dict]:
    cx = launches[0]["constexprs"]
    BLOCK = cx["BLOCK"]
    nf = _full_tiles(V, BLOCK, _elems_per_thread(8 * elem_bytes, 8 * elem_bytes))
    pairwise = kind in ("tv", "alpha")  # their sums need both normalisers: one more pass
    row_bytes = 2 * V * elem_bytes  # both inputs
    grad_bytes = N * V * elem_bytes if need_grad else 0
    if len(launches) == 1:
        launch = launches[0]
        sweeps = int(bool(need_grad) or pairwise) + int(bool(need_grad) and pairwise)
        resident = min(N, num_sms * max(1, RESIDENT_THREADS_PER_SM // (WARP * launch["num_warps"])))
        reread = sweeps * N * row_bytes
        l2 = round(min(1.0, L2_BYTES / (2 * resident * row_bytes)) * reread)
        launch.update(loops=[{"elements": 2 * N * nf * BLOCK} for _ in range(1 + sweeps)], l2_bytes=l2,
                      dram_bytes=N * row_bytes + reread - l2 + grad_bytes + 4 * N)
        return launches
    SEG, NSEG = cx["SEG"], cx["NSEG"]
    seg_loops = [{"elements": 2 * N * (NSEG - 1) * SEG * BLOCK},
                 {"elements": 2 * N * (nf - (NSEG - 1) * SEG) * BLOCK}]
    hit = min(1.0, L2_BYTES / (N * row_bytes))
    part_bytes = 4 * N * NSEG * int(NPART)
    sums_bytes = 4 * N * NSEG * int(NSUM)
    for launch in launches:
        name = launch["kernel"]
        if name == "_split_stats_kernel":
            launch.update(loops=seg_loops, dram_bytes=N * row_bytes + part_bytes, l2_bytes=0)
            continue
        streams = (name == "_split_sweep_kernel" and (need_grad or pairwise)) or \
                  (name == "_split_finish_kernel" and need_grad)
        writes_grad = need_grad and ((name == "_split_sweep_kernel") != pairwise)
        small_out = sums_bytes if (name == "_split_sweep_kernel" and pairwise) else 4 * N
        small_in = NSEG * part_bytes + (NSEG * sums_bytes if name == "_split_finish_kernel" else 0)
        reread = N * row_bytes if streams else 0
        l2 = round(hit * reread)
        launch.update(loops=seg_loops if streams else [], l2_bytes=l2 + small_in,
                      dram_bytes=reread - l2 + (grad_bytes if writes_grad else 0) + small_out)
    return launches
