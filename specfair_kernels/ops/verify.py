"""Triton kernel for `specfair_kernels.verify` (semantics: `specfair_kernels.reference`).

One launch (plus the memset of its sync words; deterministic TaskStats add a small
per-task reduction).  Every program takes a ticket from an atomic counter and runs the
work item the ticket names; an item waits only for items with smaller tickets, which
started before it, so the waits always end (the decoupled look-back argument).  Items:

* stats ``(b, j, t)``: one vocabulary chunk of used position j of request b.  Per
  thread, a running max and sum of ``2^(x*s - m*s)`` (``s = log2(e) / tau``) of the
  target and, at drafted positions, the draft; first argmax of the target.  The last
  stats item of a request merges all its chunks (lse, argmax, NaN/inf checks, log p(x),
  log q(x)), runs the accept chain and publishes the request (``ready``).
* pass 2 ``(b, j, t)``: waits for ``ready[b]``.  At the sampling position j* it streams
  the weights w = max(0, p - q) (or p) of its chunk with the normalisers known, sums
  them per group of ``RACE_GROUP`` entries and races the groups (`reference.race`, one
  exponential per group); with divergences it adds alpha = sum min(p, q), H and KL at
  every drafted position.  The last pass-2 item of a request races the entries of the
  winning group and writes tokens, counts, divergences and the TaskStats row.

Block verification (``method="block"``, `reference._block_chain`) is the ``BLOCK`` constexpr
variant; token mode's code is unchanged.  Stats items are the same.  `_merge_accept` runs the
chain of log w_j over the [KP] positions (the reference's sequential clamped sum).  If the coin
of position n hits log w_n the row accepts every draft (tau = n): token mode's bonus case, no
vocabulary sum needed.  Otherwise the row is MODE_BLOCK and its candidates are position 0 and
each i in 1..n-1 whose coin passes the cap w_i (h_i <= w_i: any other position misses without
r_i).  Pass 2 then spans every position (P2 = K+1 even without divergences): at each candidate
j the item races the weights max(0, w_j p - q) and p as in token mode (race scratch per
position) and stores the chunk's residual mass sum max(0, w_j p - q) over its consumed stats
partial (``P_MASS``).  `_finish` sums the masses into r_i, decides h_i = r_i / (r_i + 1 - w_i)
and log u_{i-1} <= min(log h_i, log w_i) with the reference's scalar formulas (exp, log and
expm1 through fp64, IEEE division), takes tau = the last hit (else 0) and races the entries of
the winning group at tau.  Greedy rows are token mode's argmax chain.

Tickets interleave the requests in waves: stats of wave w + 1 run before pass 2 of wave
w, so the rows that pass 2 re-reads were read one wave earlier and, with waves sized to
a third of L2, are still there.  Each logit of a used position is read from DRAM once.

Streaming loops hold per-thread accumulators over tiles ``[ROWS, VEC]`` (VEC logits =
16 bytes per thread and row, so loads are 128-bit), one exp2 per logit with the
temperature and log2(e) folded into one multiply-add, and reduce across threads once
after the loop.  Chunks are whole tiles but for one masked tail tile.

Numerics: decisions use the reference's formulas where they are scalars (a[x] = x / tau
by IEEE division, log u + log q <= log p, W / F and w / E by IEEE division); lse, p and
the group sums differ from torch in the last bits (summation order, exp2), which flips a
token only on an fp32 near-tie.  Block mode adds r_i (a sum over the vocabulary like lse),
w_i p - q (which the GPU compiler may contract into one FMA; one-hot drafts scale a group's
sum of p by w_i outside x's group) and exp/log/expm1 rounded from fp64, all last-bit
differences of the same kind.  On the GPU exp2 flushes results below 2^-126 to 0, so a
p that small counts as 0 (the reference keeps fp32 denormals); a tempered logit above
FLT_MAX / log2(e) (~2.4e38) makes its row invalid here while the reference accepts it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import stats as _stats
from .rng import RACE_GROUP, STREAM_ACCEPT, STREAM_GROUP, STREAM_RACE, exponential, philox_word0, uniform_accept

# Globals read inside kernels must be tl.constexpr objects (they also work as ints on the host).
C = tl.constexpr
LOG2E = C(1.4426950408889634)
LN2 = C(0.6931471805599453)
FLT_MAX = C(3.4028234663852886e38)
EXP_ROUNDS_TO_ONE = C(-(2.0**-25))  # fp32 exp(y) rounds to 1 exactly when y >= -2^-25
BIG_INDEX = C(2**30)
# stats item partials: part [B*(K+1), NT, NPART] fp32; pidx [B*(K+1), NT] int32 (first argmax)
NPART = C(4)
P_MAX_A, P_SUM_A, P_MAX_D, P_SUM_D = C(0), C(1), C(2), C(3)
P_MASS = C(0)  # block pass 2: the chunk's residual mass sum max(w p - q, 0), over a merged (consumed) partial
# per position: posf [B*(K+1), NPOS] fp32
NPOS = C(5)
POS_L2_A, POS_L2_D = C(0), C(1)  # log2-domain lse: p = exp2(target * s - POS_L2_A), likewise q
POS_LOGP_X = C(2)  # log p(x_j) at the drafted token (natural log)
POS_LW, POS_CAND = C(3), C(4)  # block mode: log w_j, and 1.0 where tau may be j (candidate), else 0.0
# per request: row [B, NROW] int32
NROW = C(4)
ROW_NACC, ROW_MODE, ROW_GTOK, ROW_BAD = C(0), C(1), C(2), C(3)
MODE_GREEDY, MODE_RESIDUAL, MODE_BONUS = C(0), C(1), C(2)
MODE_BLOCK = C(3)  # block mode, some draft not accepted: tau is decided by _finish among the candidates
# pass-2 chunk sums at drafted positions: q2 [B*(K+1), NT, NQ] fp32, in log2 units for H and KL
NQ = C(3)
Q_ALPHA, Q_H, Q_KL = C(0), C(1), C(2)
# group race per chunk of the sampling row: race_f [B, NT, NRACE] fp32 best W / F, race_i its group
# (block mode: [B*(K+1), NT, NRACE], one row per position, since every candidate position races)
NRACE = C(2)
R_RES, R_BONUS = C(0), C(1)
# divergence outputs [len(DIVERGENCE_FIELDS), B, K] and TaskStats.sums columns
D_ALPHA = C(_stats.DIVERGENCE_FIELDS.index("alpha"))
D_KL = C(_stats.DIVERGENCE_FIELDS.index("kl"))
D_CE = C(_stats.DIVERGENCE_FIELDS.index("ce"))
D_ENTROPY = C(_stats.DIVERGENCE_FIELDS.index("entropy"))
NDIV = C(len(_stats.DIVERGENCE_FIELDS))
S_ALPHA, S_KL, S_CE, S_ENTROPY = C(_stats.SUM_ALPHA), C(_stats.SUM_KL), C(_stats.SUM_CE), C(_stats.SUM_ENTROPY)
NSUM = C(len(_stats.DIVERGENCE_FIELDS))
NCOUNT = C(len(_stats.COUNT_NAMES))
C_DRAFTED = C(_stats.COUNT_DRAFTED)
C_ACCEPTED = C(_stats.COUNT_ACCEPTED)
C_EMITTED = C(_stats.COUNT_EMITTED)
C_STEPS = C(_stats.COUNT_STEPS)
C_INVALID = C(_stats.COUNT_INVALID)
C_TESTED = C(_stats.COUNT_TESTED)


# --- streaming loops ---------------------------------------------------------------------

@triton.jit
def _tile(chunk, o, L, MASKED: tl.constexpr):
    """Logits at offsets o of a chunk as fp32; -inf past its length L in the masked tail."""
    if MASKED:
        x = tl.load(chunk + o, mask=o < L, other=float("-inf"))
    else:
        x = tl.load(chunk + o)
    return x.to(tl.float32)


@triton.jit
def _stats_update(x, m, ms, z, s):
    """Per slot (tile row): raw max m, ms = max(m * s, -FLT_MAX) and z = sum 2^(x*s - ms).

    The max is taken on the raw logits (tau > 0 keeps the order, and the first argmax of
    a greedy row is on them); one exp2 per logit, one per slot and tile to rescale.
    """
    m_new = tl.maximum(m, tl.max(x, 1))
    ms_new = tl.maximum(m_new * s, -FLT_MAX)  # -FLT_MAX: no inf - inf while a slot is all -inf
    z = z * tl.exp2(ms - ms_new) + tl.sum(tl.exp2(x * s - ms_new[:, None]), 1)
    return m_new, ms_new, z


@triton.jit
def _stats_tile(tc, dc, o0, offs, L, s, m_a, ms_a, z_a, arg, m_d, ms_d, z_d,
                WITH_D: tl.constexpr, MASKED: tl.constexpr):
    x = _tile(tc, o0 + offs, L, MASKED)
    arg = tl.where(tl.max(x, 1) > m_a, o0, arg)  # strict: the first tile that holds the slot's max
    m_a, ms_a, z_a = _stats_update(x, m_a, ms_a, z_a, s)
    if WITH_D:
        m_d, ms_d, z_d = _stats_update(_tile(dc, o0 + offs, L, MASKED), m_d, ms_d, z_d, s)
    return m_a, ms_a, z_a, arg, m_d, ms_d, z_d


@triton.jit
def _stream_stats(tc, dc, c0, L, s, part, pidx, WITH_D: tl.constexpr, ROWS: tl.constexpr, VEC: tl.constexpr):
    """Stats of a target chunk (and its draft chunk) of L logits starting at vocabulary index
    c0 into the partials at part / pidx."""
    TILE: tl.constexpr = ROWS * VEC
    offs = tl.arange(0, ROWS)[:, None] * VEC + tl.arange(0, VEC)[None, :]
    m_a = tl.full([ROWS], float("-inf"), tl.float32)
    ms_a = tl.full([ROWS], -FLT_MAX, tl.float32)
    z_a = tl.zeros([ROWS], tl.float32)
    arg = tl.zeros([ROWS], tl.int32)
    m_d = m_a
    ms_d = ms_a
    z_d = z_a
    full = L // TILE * TILE
    for o in range(0, full, TILE):
        m_a, ms_a, z_a, arg, m_d, ms_d, z_d = _stats_tile(tc, dc, o, offs, L, s, m_a, ms_a, z_a, arg,
                                                          m_d, ms_d, z_d, WITH_D, False)
    if full < L:
        m_a, ms_a, z_a, arg, m_d, ms_d, z_d = _stats_tile(tc, dc, full, offs, L, s, m_a, ms_a, z_a, arg,
                                                          m_d, ms_d, z_d, WITH_D, True)
    M = tl.max(m_a, 0)
    tl.store(part + P_MAX_A, M)
    tl.store(part + P_SUM_A, tl.sum(z_a * tl.exp2(ms_a - tl.maximum(M * s, -FLT_MAX)), 0))
    # First argmax: each slot holding M reloads the tile where its max first appeared.
    o = arg[:, None] + offs
    x = tl.load(tc + o, mask=(m_a == M)[:, None] & (o < L), other=float("-inf")).to(tl.float32)
    tl.store(pidx, c0 + tl.min(tl.min(tl.where(x == M, o, BIG_INDEX), 1), 0))
    if WITH_D:
        MD = tl.max(m_d, 0)
        tl.store(part + P_MAX_D, MD)
        tl.store(part + P_SUM_D, tl.sum(z_d * tl.exp2(ms_d - tl.maximum(MD * s, -FLT_MAX)), 0))


@triton.jit
def _div_tile(tc, dc, o, L, s, l2a, l2d, alpha, h, kl, WITH_D: tl.constexpr, MASKED: tl.constexpr):
    """alpha += sum min(p, q); h += sum p log2 p; kl += sum_{p>0} p (log2 p - log2 q) (per slot)."""
    t = tl.maximum(_tile(tc, o, L, MASKED) * s - l2a, -FLT_MAX)  # log2 p, finite: 0 * t is 0
    p = tl.exp2(t)
    h += tl.sum(p * t, 1)
    if WITH_D:
        lq = _tile(dc, o, L, MASKED) * s - l2d  # log2 q, -inf where the draft is masked
        alpha += tl.sum(tl.minimum(p, tl.exp2(lq)), 1)
        kl += tl.sum(p * tl.where(p > 0.0, t - lq, 0.0), 1)
    return alpha, h, kl


@triton.jit
def _stream_div(tc, dc, L, s, l2a, l2d, q2, WITH_D: tl.constexpr, ROWS: tl.constexpr, VEC: tl.constexpr):
    """Divergence sums of a chunk of L logits of a drafted position into q2 (H only for one-hot drafts)."""
    TILE: tl.constexpr = ROWS * VEC
    offs = tl.arange(0, ROWS)[:, None] * VEC + tl.arange(0, VEC)[None, :]
    alpha = tl.zeros([ROWS], tl.float32)
    h = tl.zeros([ROWS], tl.float32)
    kl = tl.zeros([ROWS], tl.float32)
    full = L // TILE * TILE
    for o in range(0, full, TILE):
        alpha, h, kl = _div_tile(tc, dc, o + offs, L, s, l2a, l2d, alpha, h, kl, WITH_D, False)
    if full < L:
        alpha, h, kl = _div_tile(tc, dc, full + offs, L, s, l2a, l2d, alpha, h, kl, WITH_D, True)
    tl.store(q2 + Q_H, tl.sum(h, 0))
    if WITH_D:
        tl.store(q2 + Q_ALPHA, tl.sum(alpha, 0))
        tl.store(q2 + Q_KL, tl.sum(kl, 0))


@triton.jit
def _race_tile(tc, dc, o0, offs, L, g0, s, l2a, l2d, gx, wx, seed, j, step, best_r, grp_r, best_p, grp_p,
               alpha, h, kl, wsc, mass, RESIDUAL: tl.constexpr, ONE_HOT: tl.constexpr, DIV: tl.constexpr,
               BLOCK: tl.constexpr, MASKED: tl.constexpr, ROWS: tl.constexpr, VEC: tl.constexpr):
    """One group of RACE_GROUP entries per slot: weights summed, one exponential per group.
    BLOCK: the residual weights are max(0, wsc p - q) and their sum is also added to ``mass``."""
    w_r = tl.zeros([ROWS], tl.float32)
    w_p = tl.zeros([ROWS], tl.float32)
    for k in tl.static_range(RACE_GROUP // VEC):
        o = o0 + offs + k * VEC
        t = _tile(tc, o, L, MASKED) * s - l2a  # log2 p
        if DIV:
            t = tl.maximum(t, -FLT_MAX)  # finite, so that p * t is 0 where p is
        p = tl.exp2(t)
        w_p += tl.sum(p, 1)
        if DIV:
            h += tl.sum(p * t, 1)
        if RESIDUAL and not ONE_HOT:
            lq = _tile(dc, o, L, MASKED) * s - l2d
            q = tl.exp2(lq)
            if BLOCK:
                w_r += tl.sum(tl.maximum(wsc * p - q, 0.0), 1)
            else:
                w_r += tl.sum(tl.maximum(p - q, 0.0), 1)
            if DIV:
                alpha += tl.sum(tl.minimum(p, q), 1)
                kl += tl.sum(p * tl.where(p > 0.0, t - lq, 0.0), 1)
    g = g0 + o0 // RACE_GROUP + tl.arange(0, ROWS)
    if ONE_HOT:
        # max(0, w p - onehot(x)) differs from w p in x's group only (block mode scales the group sum)
        if BLOCK:
            w_r = tl.where(g == gx, wx, wsc * w_p)
        else:
            w_r = tl.where(g == gx, wx, w_p)
    if BLOCK:
        mass += w_r
    f = exponential(philox_word0(seed, g, j, step, STREAM_GROUP))
    sc = tl.math.div_rn(w_p, f)
    better = sc > best_p  # strict: a slot's groups come in increasing order
    best_p = tl.where(better, sc, best_p)
    grp_p = tl.where(better, g, grp_p)
    if RESIDUAL:
        sc = tl.math.div_rn(w_r, f)
        better = sc > best_r
        best_r = tl.where(better, sc, best_r)
        grp_r = tl.where(better, g, grp_r)
    return best_r, grp_r, best_p, grp_p, alpha, h, kl, mass


@triton.jit
def _stream_race(tc, dc, c0, L, s, l2a, l2d, x, seed, j, step, rf, ri, q2, wsc, mp,
                 RESIDUAL: tl.constexpr, ONE_HOT: tl.constexpr, DIV: tl.constexpr, BLOCK: tl.constexpr,
                 ROWS: tl.constexpr, VEC: tl.constexpr):
    """Group race over the chunk of L logits at c0 of the sampling row: best W / F and its group into rf / ri
    for the residual weights max(0, p - q) (RESIDUAL) and the bonus weights p; with DIV the
    divergence sums of this (drafted) position into q2.  BLOCK (with RESIDUAL): the residual
    weights are max(0, wsc p - q), wsc = w_j, and their sum over the chunk goes to mp."""
    TILE: tl.constexpr = ROWS * RACE_GROUP
    offs = tl.arange(0, ROWS)[:, None] * RACE_GROUP + tl.arange(0, VEC)[None, :]
    best_r = tl.full([ROWS], -1.0, tl.float32)  # scores are >= 0: the first group always enters
    best_p = best_r
    grp_r = tl.zeros([ROWS], tl.int32)
    grp_p = grp_r
    alpha = tl.zeros([ROWS], tl.float32)
    h = alpha
    kl = alpha
    g0 = c0 // RACE_GROUP
    gx = x // RACE_GROUP  # one-hot drafts: the group of the drafted token x
    og = gx * RACE_GROUP - c0 + tl.arange(0, RACE_GROUP)
    wx = 0.0
    mass = alpha
    if ONE_HOT:
        px = tl.exp2(tl.load(tc + og, mask=(og >= 0) & (og < L), other=float("-inf")).to(tl.float32) * s - l2a)
        if BLOCK:
            px = wsc * px
        wx = tl.sum(tl.maximum(px - tl.where(og == x - c0, 1.0, 0.0), 0.0), 0)
    full = L // TILE * TILE
    for o in range(0, full, TILE):
        best_r, grp_r, best_p, grp_p, alpha, h, kl, mass = _race_tile(
            tc, dc, o, offs, L, g0, s, l2a, l2d, gx, wx, seed, j, step, best_r, grp_r, best_p, grp_p, alpha, h,
            kl, wsc, mass, RESIDUAL, ONE_HOT, DIV, BLOCK, False, ROWS, VEC)
    if full < L:
        best_r, grp_r, best_p, grp_p, alpha, h, kl, mass = _race_tile(
            tc, dc, full, offs, L, g0, s, l2a, l2d, gx, wx, seed, j, step, best_r, grp_r, best_p, grp_p, alpha,
            h, kl, wsc, mass, RESIDUAL, ONE_HOT, DIV, BLOCK, True, ROWS, VEC)
    v = tl.max(best_p, 0)
    tl.store(rf + R_BONUS, v)
    tl.store(ri + R_BONUS, tl.min(tl.where(best_p == v, grp_p, BIG_INDEX), 0))
    if RESIDUAL:
        v = tl.max(best_r, 0)
        tl.store(rf + R_RES, v)
        tl.store(ri + R_RES, tl.min(tl.where(best_r == v, grp_r, BIG_INDEX), 0))
        if BLOCK:
            tl.store(mp, tl.sum(mass, 0))
        if DIV:
            tl.store(q2 + Q_H, tl.sum(h, 0))
            if not ONE_HOT:
                tl.store(q2 + Q_ALPHA, tl.sum(alpha, 0))
                tl.store(q2 + Q_KL, tl.sum(kl, 0))


# --- per-position and per-request steps ----------------------------------------------------

@triton.jit
def _merge_lse(part, F_MAX: tl.constexpr, F_SUM: tl.constexpr, mask, s, tau):
    """Merge chunk partials [positions, chunks] along the chunks: per position the chunk
    maxima, max, log2-domain lse, natural lse and the invalid flag."""
    m = tl.load(part + F_MAX, mask=mask, other=float("-inf"), cache_modifier=".cg")
    z = tl.load(part + F_SUM, mask=mask, other=0.0, cache_modifier=".cg")
    M = tl.max(m, 1)
    MS = tl.maximum(M * s, -FLT_MAX)
    Z = tl.sum(z * tl.exp2(tl.maximum(m * s, -FLT_MAX) - MS[:, None]), 1)
    a_max = tl.math.div_rn(M, tau)  # the reference's max of logits / tau
    # Invalid: NaN (z is NaN then; the interpreter's max also propagates it), a tempered
    # +inf, or all -inf.  A finite a_max above FLT_MAX / log2(e) overflows M * s: invalid too.
    bad = (Z != Z) | (M != M) | (a_max == float("inf")) | (M * s == float("inf")) | (M == float("-inf"))
    lz = tl.log2(tl.where(Z > 0, Z, 1.0))  # Z = 0 only with M = -inf: invalid anyway
    return m, M, MS + lz, a_max + LN2 * lz, bad


@triton.jit
def _log32(x):
    """fp32 log through fp64: the correctly rounded value but for a double rounding (block decisions)."""
    return tl.log(x.to(tl.float64)).to(tl.float32)


@triton.jit
def _exp32(x):
    """fp32 exp through fp64, like `_log32`."""
    return tl.exp(x.to(tl.float64)).to(tl.float32)


@triton.jit
def _expm1_32(x):
    """fp32 expm1 through fp64 (Kahan's (e - 1) * x / log e: accurate for tiny |x| too)."""
    xd = x.to(tl.float64)
    e = tl.exp(xd)
    em1 = e - 1.0
    regular = (em1 != 0.0) & (em1 != -1.0)
    kahan = em1 * xd / tl.log(tl.where(regular, e, 2.0))
    return tl.where(regular, kahan, tl.where(em1 == 0.0, xd, -1.0)).to(tl.float32)


@triton.jit
def _block_chain(logp, logq, u, jj, n, drafted, KP: tl.constexpr):
    """Block mode's chain up to the vocabulary sums (reference._block_chain), as [KP] vectors:
    log w_j at every position, whether every draft is accepted (the coin of position n hits
    log h_n = log w_n; always for n = 0), and the candidates: position 0 and each i in 1..n-1
    whose coin passes the cap w_i (h_i <= w_i, so any other misses without r_i)."""
    inc = tl.where(logq == float("-inf"), float("inf"), logp - logq)
    inc = tl.where(logp == float("-inf"), float("-inf"), inc)
    inc = tl.where(drafted, inc, 0.0)  # the reference's masked positions: log p = log q = 0
    lu = _log32(u)  # coin of position jj + 1
    lw = tl.zeros([KP], tl.float32)
    cap = tl.where(jj == 0, 1, 0)  # 1 where log u_{i-1} <= log w_i at position i
    cur = tl.sum(lw, 0)  # log w_0 = 0, then the reference's sequential clamped sum
    for i in tl.static_range(1, KP):
        cur = tl.where(cur == float("-inf"), float("-inf"),
                       tl.minimum(cur + tl.sum(tl.where(jj == i - 1, inc, 0.0), 0), 0.0))
        lw = tl.where(jj == i, cur, lw)
        cap = tl.where(jj == i, tl.where(tl.sum(tl.where(jj == i - 1, lu, 0.0), 0) <= cur, 1, 0), cap)
    all_acc = (n == 0) | (tl.sum(tl.where(jj == n, cap, 0), 0) > 0)
    cand = (cap != 0) & (jj < n)
    return lw, cand, all_acc


@triton.jit
def _block_tau(posf_ptr, part_ptr, seed, step, r0, n, NT, NT_P2: tl.constexpr, KP: tl.constexpr):
    """Block mode's accepted length tau among the candidates of `_block_chain`, with r_i the sum
    of pass 2's chunk masses: h_i = r_i / (r_i + 1 - w_i) (0 if r_i = 0), hit where log u_{i-1}
    <= min(log h_i, log w_i); tau = the last hit, else 0.  Returns (tau, w_tau)."""
    jj = tl.arange(0, KP)
    tt = tl.arange(0, NT_P2)
    pf = posf_ptr + (r0 + jj) * NPOS
    drafted = jj < n
    cand = (tl.load(pf + POS_CAND, mask=drafted, other=0.0, cache_modifier=".cg") != 0.0) & (jj >= 1)
    lw = tl.load(pf + POS_LW, mask=drafted, other=0.0, cache_modifier=".cg")
    pm = part_ptr + ((r0 + jj)[:, None] * NT + tt[None, :]) * NPART + P_MASS
    r = tl.sum(tl.load(pm, mask=cand[:, None] & (tt < NT)[None, :], other=0.0, cache_modifier=".cg"), 1)
    pos = r > 0.0
    h = tl.where(pos, tl.math.div_rn(r, tl.where(pos, r + -_expm1_32(lw), 1.0)), 0.0)
    log_h = tl.minimum(tl.where(h > 0.0, _log32(tl.where(h > 0.0, h, 1.0)), float("-inf")), lw)
    u = uniform_accept(philox_word0(seed, 0, tl.maximum(jj - 1, 0), step, STREAM_ACCEPT))
    hit = cand & (_log32(u) <= log_h)
    tau = tl.max(tl.where(hit, jj, 0), 0)
    return tau, _exp32(tl.sum(tl.where(jj == tau, lw, 0.0), 0))


@triton.jit
def _merge_accept(target_ptr, draft_ptr, xtok_ptr, temp_ptr, seed_ptr, step_ptr, part_ptr, pidx_ptr, posf_ptr,
                  row_ptr, b, n, K, V, NT, HAS_DRAFT: tl.constexpr, BLOCK: tl.constexpr, NT_P2: tl.constexpr,
                  KP: tl.constexpr):
    """Last stats item of request b: merge every used position's chunks (lse, first argmax,
    validity, log p(x_j), log q(x_j)) and run the accept chain, all as [KP] vectors: one
    round of loads and no loop (B=1 is latency-bound).  Writes posf and row[b].  BLOCK:
    sampling rows run `_block_chain`; all accepted is token mode's bonus case (tau = n),
    otherwise the row is MODE_BLOCK and tau waits for the candidates' masses (`_finish`)."""
    b64 = b.to(tl.int64)
    r0 = b64 * (K + 1)
    jj = tl.arange(0, KP)
    tt = tl.arange(0, NT_P2)
    used = jj <= n
    drafted = jj < n
    temp = tl.load(temp_ptr + b)
    greedy = temp == 0
    tau = tl.where(greedy, 1.0, temp)
    s = LOG2E / tau
    tmask = tt[None, :] < NT
    part = part_ptr + ((r0 + jj)[:, None] * NT + tt[None, :]) * NPART
    m, M, l2a, lse_a, bad = _merge_lse(part, P_MAX_A, P_SUM_A, used[:, None] & tmask, s, tau)
    pid = tl.load(pidx_ptr + (r0 + jj)[:, None] * NT + tt[None, :], mask=used[:, None] & tmask, other=BIG_INDEX,
                  cache_modifier=".cg")
    amax = tl.min(tl.where(m == M[:, None], pid, BIG_INDEX), 1)  # the first chunk holding the max
    x = tl.minimum(tl.maximum(tl.load(xtok_ptr + b64 * K + jj, mask=drafted, other=0), 0), V - 1)
    xt = tl.load(target_ptr + (r0 + jj) * V + x, mask=drafted, other=0.0).to(tl.float32)
    logp = tl.math.div_rn(xt, tau) - lse_a
    l2d = tl.zeros([KP], tl.float32)
    logq = tl.zeros([KP], tl.float32)
    if HAS_DRAFT:
        _, _, l2d, lse_d, bad_d = _merge_lse(part, P_MAX_D, P_SUM_D, drafted[:, None] & tmask, s, tau)
        bad = bad | (bad_d & drafted)
        xd = tl.load(draft_ptr + (b64 * K + jj) * V + x, mask=drafted, other=0.0).to(tl.float32)
        logq = tl.math.div_rn(xd, tau) - lse_d
    u = uniform_accept(philox_word0(tl.load(seed_ptr + b), 0, jj, tl.load(step_ptr + b), STREAM_ACCEPT))
    acc = tl.where(greedy, x == amax, (logp > float("-inf")) & (tl.log(u) + logq <= logp)) & drafted
    n_acc = tl.min(tl.where(acc, KP, jj), 0)  # the first position not accepted
    mode = tl.where(greedy, MODE_GREEDY, tl.where(n_acc < n, MODE_RESIDUAL, MODE_BONUS))
    pf = posf_ptr + (r0 + jj) * NPOS
    tl.store(pf + POS_L2_A, l2a, mask=used)
    tl.store(pf + POS_L2_D, l2d, mask=used)
    tl.store(pf + POS_LOGP_X, logp, mask=used)
    if BLOCK:
        lw, cand, all_acc = _block_chain(logp, logq, u, jj, n, drafted, KP)
        tl.store(pf + POS_LW, lw, mask=used)
        tl.store(pf + POS_CAND, tl.where(cand, 1.0, 0.0), mask=used)
        n_acc = tl.where(greedy, n_acc, tl.where(all_acc, n.to(tl.int32), 0))
        mode = tl.where(greedy, MODE_GREEDY, tl.where(all_acc, MODE_BONUS, MODE_BLOCK))
    rp = row_ptr + b * NROW
    tl.store(rp + ROW_NACC, n_acc)
    tl.store(rp + ROW_MODE, mode)
    tl.store(rp + ROW_GTOK, tl.sum(tl.where(jj == n_acc, amax, 0), 0))
    tl.store(rp + ROW_BAD, tl.max(tl.where(used & bad, 1, 0), 0))


@triton.jit
def _stats_item(target_ptr, draft_ptr, xtok_ptr, num_draft_ptr, temp_ptr, seed_ptr, step_ptr, part_ptr, pidx_ptr,
                posf_ptr, row_ptr, reqcnt_ptr, ready_ptr, b, j, t, K, V, NT, CHUNK,
                HAS_DRAFT: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr, VEC: tl.constexpr,
                ROWS: tl.constexpr, NT_P2: tl.constexpr, KP: tl.constexpr):
    n = tl.load(num_draft_ptr + b)
    if j <= n:
        temp = tl.load(temp_ptr + b)
        tau = tl.where(temp > 0, temp, 1.0)
        s = LOG2E / tau
        r = b.to(tl.int64) * (K + 1) + j
        c0 = t * CHUNK
        L = tl.minimum(CHUNK, V - c0)
        tc = target_ptr + r * V + c0
        dc = draft_ptr + (b.to(tl.int64) * K + j) * V + c0
        if ALIGNED:  # rows and chunks start on 16 bytes: 128-bit loads
            tc = tl.multiple_of(tc, 16)
            dc = tl.multiple_of(dc, 16)
        part = part_ptr + (r * NT + t) * NPART
        pidx = pidx_ptr + r * NT + t
        if HAS_DRAFT:
            if j < n:
                _stream_stats(tc, dc, c0, L, s, part, pidx, True, ROWS, VEC)
            else:
                _stream_stats(tc, dc, c0, L, s, part, pidx, False, ROWS, VEC)
        else:
            _stream_stats(tc, dc, c0, L, s, part, pidx, False, ROWS, VEC)
        # Publish the partials; the last stats item of the request merges them (release/acquire
        # through the counter; the barrier orders every thread's stores before it).
        tl.debug_barrier()
        if tl.atomic_add(reqcnt_ptr + b, 1, sem="acq_rel") == (n + 1) * NT - 1:
            _merge_accept(target_ptr, draft_ptr, xtok_ptr, temp_ptr, seed_ptr, step_ptr, part_ptr, pidx_ptr,
                          posf_ptr, row_ptr, b, n, K, V, NT, HAS_DRAFT, BLOCK, NT_P2, KP)
            tl.debug_barrier()
            tl.atomic_xchg(ready_ptr + b, 1, sem="release")


@triton.jit
def _pass2_item(target_ptr, draft_ptr, xtok_ptr, temp_ptr, seed_ptr, step_ptr, posf_ptr, row_ptr, part_ptr,
                q2_ptr, race_f_ptr, race_i_ptr, b, jj, t, n, K, V, NT, CHUNK,
                HAS_DRAFT: tl.constexpr, NEED_DIV: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr,
                VEC: tl.constexpr, ROWS: tl.constexpr, RACE_ROWS: tl.constexpr):
    rp = row_ptr + b * NROW
    n_acc = tl.load(rp + ROW_NACC, cache_modifier=".cg")
    mode = tl.load(rp + ROW_MODE, cache_modifier=".cg")
    bad = tl.load(rp + ROW_BAD, cache_modifier=".cg")
    if NEED_DIV or BLOCK:
        j = jj
    else:
        j = n_acc
    if (bad == 0) & (j <= n):
        do_div = NEED_DIV & (j < n)
        if BLOCK:  # MODE_BLOCK: every candidate position races (and sums its residual mass)
            cand = tl.load(posf_ptr + (b.to(tl.int64) * (K + 1) + j) * NPOS + POS_CAND, mask=mode == MODE_BLOCK,
                           other=0.0, cache_modifier=".cg")
            do_race = (cand != 0.0) | ((j == n_acc) & (mode == MODE_BONUS))
        else:
            do_race = (j == n_acc) & (mode != MODE_GREEDY)
        if do_div | do_race:
            temp = tl.load(temp_ptr + b)
            tau = tl.where(temp > 0, temp, 1.0)
            s = LOG2E / tau
            r = b.to(tl.int64) * (K + 1) + j
            l2a = tl.load(posf_ptr + r * NPOS + POS_L2_A, cache_modifier=".cg")
            l2d = tl.load(posf_ptr + r * NPOS + POS_L2_D, cache_modifier=".cg")
            c0 = t * CHUNK
            L = tl.minimum(CHUNK, V - c0)
            tc = target_ptr + r * V + c0
            dc = draft_ptr + (b.to(tl.int64) * K + j) * V + c0
            if ALIGNED:
                tc = tl.multiple_of(tc, 16)
                dc = tl.multiple_of(dc, 16)
            q2 = q2_ptr + (r * NT + t) * NQ
            if do_race:
                seed = tl.load(seed_ptr + b)
                step = tl.load(step_ptr + b)
                if BLOCK:
                    rf = race_f_ptr + (r * NT + t) * NRACE
                    ri = race_i_ptr + (r * NT + t) * NRACE
                else:
                    rf = race_f_ptr + (b.to(tl.int64) * NT + t) * NRACE
                    ri = race_i_ptr + (b.to(tl.int64) * NT + t) * NRACE
                if BLOCK:
                    if mode == MODE_BLOCK:
                        wsc = _exp32(tl.load(posf_ptr + r * NPOS + POS_LW, cache_modifier=".cg"))
                        mp = part_ptr + (r * NT + t) * NPART + P_MASS
                        if HAS_DRAFT:
                            _stream_race(tc, dc, c0, L, s, l2a, l2d, 0, seed, j, step, rf, ri, q2, wsc, mp,
                                         True, False, NEED_DIV, True, RACE_ROWS, VEC)
                        else:
                            xq = tl.minimum(tl.maximum(tl.load(xtok_ptr + b.to(tl.int64) * K + j), 0), V - 1)
                            _stream_race(tc, dc, c0, L, s, l2a, l2d, xq, seed, j, step, rf, ri, q2, wsc, mp,
                                         True, True, NEED_DIV, True, RACE_ROWS, VEC)
                    else:
                        _stream_race(tc, dc, c0, L, s, l2a, l2d, 0, seed, j, step, rf, ri, q2, 1.0, rf,
                                     False, False, False, False, RACE_ROWS, VEC)
                elif mode == MODE_RESIDUAL:
                    if HAS_DRAFT:
                        _stream_race(tc, dc, c0, L, s, l2a, l2d, 0, seed, j, step, rf, ri, q2, 1.0, rf,
                                     True, False, NEED_DIV, False, RACE_ROWS, VEC)
                    else:
                        xq = tl.minimum(tl.maximum(tl.load(xtok_ptr + b.to(tl.int64) * K + j), 0), V - 1)
                        _stream_race(tc, dc, c0, L, s, l2a, l2d, xq, seed, j, step, rf, ri, q2, 1.0, rf,
                                     True, True, NEED_DIV, False, RACE_ROWS, VEC)
                else:
                    _stream_race(tc, dc, c0, L, s, l2a, l2d, 0, seed, j, step, rf, ri, q2, 1.0, rf,
                                 False, False, False, False, RACE_ROWS, VEC)
            else:
                _stream_div(tc, dc, L, s, l2a, l2d, q2, HAS_DRAFT, ROWS, VEC)


@triton.jit
def _finish(target_ptr, draft_ptr, xtok_ptr, temp_ptr, seed_ptr, step_ptr, posf_ptr, row_ptr, part_ptr,
            q2_ptr, race_f_ptr, race_i_ptr, out_tokens_ptr, out_nacc_ptr, out_nemit_ptr, div_ptr, task_ptr,
            counts_ptr, hist_ptr, sums_ptr, rowsum_ptr, b, n, B, K, V, NT, HIST_W,
            HAS_DRAFT: tl.constexpr, NEED_DIV: tl.constexpr, HAS_STATS: tl.constexpr,
            DETERMINISTIC: tl.constexpr, BLOCK: tl.constexpr, NT_P2: tl.constexpr, KP: tl.constexpr):
    """Request b after its last pass-2 item: (BLOCK, MODE_BLOCK: tau by `_block_tau`) the entry
    race, tokens, counts, divergences."""
    b64 = b.to(tl.int64)
    rp = row_ptr + b * NROW
    n_acc = tl.load(rp + ROW_NACC, cache_modifier=".cg")
    mode = tl.load(rp + ROW_MODE, cache_modifier=".cg")
    bad_i = tl.load(rp + ROW_BAD, cache_modifier=".cg")
    bad = bad_i != 0
    tt = tl.arange(0, NT_P2)
    tmask = tt < NT
    tok = tl.load(rp + ROW_GTOK, cache_modifier=".cg").to(tl.int64)
    wsc = tl.full((), 1.0, tl.float32)  # w_tau: scales p in block mode's residual
    if BLOCK:
        if (mode == MODE_BLOCK) & (bad_i == 0):
            n_acc, wsc = _block_tau(posf_ptr, part_ptr, tl.load(seed_ptr + b), tl.load(step_ptr + b),
                                    b64 * (K + 1), n, NT, NT_P2, KP)
    if (mode != MODE_GREEDY) & (bad_i == 0):
        if BLOCK:
            rb = ((b64 * (K + 1) + n_acc) * NT + tt) * NRACE
        else:
            rb = (b64 * NT + tt) * NRACE
        v = tl.load(race_f_ptr + rb + R_RES, mask=tmask, other=-1.0, cache_modifier=".cg")
        best_r = tl.max(v, 0)
        grp_r = tl.min(tl.where(v == best_r, tl.load(race_i_ptr + rb + R_RES, mask=tmask, other=BIG_INDEX,
                                                     cache_modifier=".cg"), BIG_INDEX), 0)
        v = tl.load(race_f_ptr + rb + R_BONUS, mask=tmask, other=-1.0, cache_modifier=".cg")
        grp_p = tl.min(tl.where(v == tl.max(v, 0), tl.load(race_i_ptr + rb + R_BONUS, mask=tmask,
                                                          other=BIG_INDEX, cache_modifier=".cg"), BIG_INDEX), 0)
        if BLOCK:
            use_r = (mode == MODE_BLOCK) & (best_r > 0.0)
        else:
            use_r = (mode == MODE_RESIDUAL) & (best_r > 0.0)  # else no residual mass: the bonus weights
        grp = tl.where(use_r, grp_r, grp_p)
        temp = tl.load(temp_ptr + b)
        s = LOG2E / tl.where(temp > 0, temp, 1.0)
        r = b64 * (K + 1) + n_acc
        l2a = tl.load(posf_ptr + r * NPOS + POS_L2_A, cache_modifier=".cg")
        idx = grp * RACE_GROUP + tl.arange(0, RACE_GROUP)
        inside = idx < V
        w = tl.exp2(tl.maximum(tl.load(target_ptr + r * V + idx, mask=inside, other=float("-inf")).to(tl.float32)
                               * s - l2a, -FLT_MAX))
        if use_r:
            if HAS_DRAFT:
                l2d = tl.load(posf_ptr + r * NPOS + POS_L2_D, cache_modifier=".cg")
                d = tl.load(draft_ptr + (b64 * K + n_acc) * V + idx, mask=inside, other=float("-inf"))
                q = tl.exp2(d.to(tl.float32) * s - l2d)
            else:
                xq = tl.minimum(tl.maximum(tl.load(xtok_ptr + b64 * K + n_acc), 0), V - 1)
                q = tl.where(idx == xq, 1.0, 0.0)
            if BLOCK:
                w = tl.maximum(wsc * w - q, 0.0)
            else:
                w = tl.maximum(w - q, 0.0)
        e = exponential(philox_word0(tl.load(seed_ptr + b), idx, n_acc, tl.load(step_ptr + b), STREAM_RACE))
        sc = tl.where(inside, tl.math.div_rn(w, e), -1.0)
        tok = tl.min(tl.where(sc == tl.max(sc, 0), idx, BIG_INDEX), 0).to(tl.int64)
    jj = tl.arange(0, KP)
    drafted = tl.minimum(tl.maximum(tl.load(xtok_ptr + b64 * K + jj, mask=jj < K, other=0), 0), V - 1)
    out = tl.where(jj < n_acc, drafted, tl.where(jj == n_acc, tok, -1))
    out = tl.where(bad, -1, out)
    tl.store(out_tokens_ptr + b64 * (K + 1) + jj, out, mask=jj < K + 1)
    tl.store(out_nacc_ptr + b, tl.where(bad, 0, n_acc))
    tl.store(out_nemit_ptr + b, tl.where(bad, 0, n_acc + 1))
    if NEED_DIV:
        used = jj < n
        rows = b64 * (K + 1) + jj
        qo = q2_ptr + (rows[:, None] * NT + tt[None, :]) * NQ
        qm = used[:, None] & tmask[None, :]
        ent = -LN2 * tl.sum(tl.load(qo + Q_H, mask=qm, other=0.0, cache_modifier=".cg"), 1)
        if HAS_DRAFT:
            alpha = tl.sum(tl.load(qo + Q_ALPHA, mask=qm, other=0.0, cache_modifier=".cg"), 1)
            kl = LN2 * tl.sum(tl.load(qo + Q_KL, mask=qm, other=0.0, cache_modifier=".cg"), 1)
            ce = kl + ent
        else:
            # q is one-hot at x: alpha = p(x); CE = KL = +inf unless p(x) rounds to 1 in fp32.
            lpx = tl.load(posf_ptr + rows * NPOS + POS_LOGP_X, mask=used, other=0.0, cache_modifier=".cg")
            alpha = tl.exp(lpx)
            kl = tl.where(lpx >= EXP_ROUNDS_TO_ONE, 0.0, float("inf"))
            ce = kl
        nan = float("nan")
        alpha = tl.where(used, tl.where(bad, nan, alpha), 0.0)
        kl = tl.where(used, tl.where(bad, nan, kl), 0.0)
        ce = tl.where(used, tl.where(bad, nan, ce), 0.0)
        ent = tl.where(used, tl.where(bad, nan, ent), 0.0)
        # B * K from a tensor: an integer argument equal to 1 is a Python constant (no .to())
        BK = (b64 * 0 + B) * K
        dmask = jj < K
        o = b64 * K + jj
        tl.store(div_ptr + D_ALPHA * BK + o, alpha, mask=dmask)
        tl.store(div_ptr + D_KL * BK + o, kl, mask=dmask)
        tl.store(div_ptr + D_CE * BK + o, ce, mask=dmask)
        tl.store(div_ptr + D_ENTROPY * BK + o, ent, mask=dmask)
        if HAS_STATS:
            # an invalid row adds nothing (its values are NaN)
            s_alpha = tl.where(bad, 0.0, tl.sum(tl.where(used, alpha, 0.0).to(tl.float64), 0))
            s_kl = tl.where(bad, 0.0, tl.sum(tl.where(used, kl, 0.0).to(tl.float64), 0))
            s_ce = tl.where(bad, 0.0, tl.sum(tl.where(used, ce, 0.0).to(tl.float64), 0))
            s_h = tl.where(bad, 0.0, tl.sum(tl.where(used, ent, 0.0).to(tl.float64), 0))
            if DETERMINISTIC:
                rs = rowsum_ptr + b64 * NSUM
                tl.store(rs + S_ALPHA, s_alpha)
                tl.store(rs + S_KL, s_kl)
                tl.store(rs + S_CE, s_ce)
                tl.store(rs + S_ENTROPY, s_h)
            else:
                if bad_i == 0:
                    sp = sums_ptr + tl.load(task_ptr + b) * NSUM
                    tl.atomic_add(sp + S_ALPHA, s_alpha, sem="relaxed")
                    tl.atomic_add(sp + S_KL, s_kl, sem="relaxed")
                    tl.atomic_add(sp + S_CE, s_ce, sem="relaxed")
                    tl.atomic_add(sp + S_ENTROPY, s_h, sem="relaxed")
    if HAS_STATS:
        task = tl.load(task_ptr + b)
        cp = counts_ptr + task * NCOUNT
        if bad_i != 0:
            tl.atomic_add(cp + C_INVALID, 1, sem="relaxed")
        else:
            tl.atomic_add(cp + C_DRAFTED, n, sem="relaxed")
            tl.atomic_add(cp + C_ACCEPTED, n_acc.to(tl.int64), sem="relaxed")
            tl.atomic_add(cp + C_EMITTED, n_acc.to(tl.int64) + 1, sem="relaxed")
            tl.atomic_add(cp + C_STEPS, 1, sem="relaxed")
            tl.atomic_add(cp + C_TESTED, n_acc.to(tl.int64) + (n_acc < n).to(tl.int64), sem="relaxed")
            tl.atomic_add(hist_ptr + task * HIST_W + n_acc, 1, sem="relaxed")


# --- the kernel ----------------------------------------------------------------------------

@triton.jit
def _verify_kernel(
    target_ptr,      # [B, K+1, V] fp32 | bf16 | fp16
    draft_ptr,       # [B, K, V]   fp32 | bf16 | fp16 (HAS_DRAFT; else any pointer, never read)
    xtok_ptr,        # [B, K] int64 drafted tokens
    num_draft_ptr,   # [B] int64
    temp_ptr,        # [B] fp32, 0 = greedy (divergences and lse then at tau = 1)
    seed_ptr,        # [B] int64
    step_ptr,        # [B] int64
    part_ptr,        # [B*(K+1), NT, NPART] fp32 scratch: chunk partials (BLOCK: then P_MASS)
    pidx_ptr,        # [B*(K+1), NT] int32 scratch: chunk first argmax
    posf_ptr,        # [B*(K+1), NPOS] fp32 scratch: per-position normalisers
    row_ptr,         # [B, NROW] int32 scratch: accept result
    q2_ptr,          # [B*(K+1), NT, NQ] fp32 scratch: divergence chunk sums (NEED_DIV)
    race_f_ptr,      # [B, NT, NRACE] fp32 scratch: best group score per chunk ([B*(K+1), ...] if BLOCK)
    race_i_ptr,      # [B, NT, NRACE] int32 scratch: its group
    ticket_ptr,      # [1] int32, zero: next ticket
    reqcnt_ptr,      # [B] int32, zero: finished stats items per request
    ready_ptr,       # [B] int32, zero: accept chain done
    fincnt_ptr,      # [B] int32, zero: finished pass-2 items per request
    out_tokens_ptr,  # [B, K+1] int64 out
    out_nacc_ptr,    # [B] int32 out
    out_nemit_ptr,   # [B] int32 out
    div_ptr,         # [NDIV, B, K] fp32 out (NEED_DIV), DIVERGENCE_FIELDS order
    task_ptr,        # [B] int64 task ids (HAS_STATS)
    counts_ptr,      # [T, NCOUNT] int64 TaskStats.counts (HAS_STATS)
    hist_ptr,        # [T, HIST_W] int64 TaskStats.hist (HAS_STATS)
    sums_ptr,        # [T, NSUM] float64 TaskStats.sums (HAS_STATS, atomics)
    rowsum_ptr,      # [B, NSUM] float64 out: per-row divergence sums (DETERMINISTIC)
    B, K, V, NT, CHUNK, WAVE, HIST_W,
    HAS_DRAFT: tl.constexpr, NEED_DIV: tl.constexpr, HAS_STATS: tl.constexpr, DETERMINISTIC: tl.constexpr,
    ALIGNED: tl.constexpr, VEC: tl.constexpr, ROWS: tl.constexpr, RACE_ROWS: tl.constexpr,
    NT_P2: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr,
):
    # Ticket order: S(0), S(1), P(0), S(2), P(1), ..., S(NW-1), P(NW-2), P(NW-1), where S(w)
    # are the stats items of wave w (WAVE requests x (K+1) positions x NT chunks, request-major)
    # and P(w) its pass-2 items (x P2 positions: every position with divergences or in block
    # mode, else the sampling one).  A pass-2 item waits only for stats items of its own wave:
    # smaller tickets.
    k = tl.atomic_add(ticket_ptr, 1, sem="relaxed")
    if NEED_DIV or BLOCK:
        P2 = K + 1
    else:
        P2 = 1
    SW = WAVE * (K + 1) * NT
    PW = WAVE * P2 * NT
    NW = (B + WAVE - 1) // WAVE
    k2 = tl.maximum(k - SW, 0)
    g = k2 // (SW + PW)
    r2 = k2 % (SW + PW)
    first = k < SW
    is_stats = first | ((g < NW - 1) & (r2 < SW))
    wave = tl.where(first, 0, tl.where(is_stats, g + 1, g))
    r = tl.where(first, k, tl.where(is_stats | (g >= NW - 1), r2, r2 - SW))
    if is_stats:
        b = wave * WAVE + r // ((K + 1) * NT)
        rr = r % ((K + 1) * NT)
        if b < B:
            _stats_item(target_ptr, draft_ptr, xtok_ptr, num_draft_ptr, temp_ptr, seed_ptr, step_ptr, part_ptr,
                        pidx_ptr, posf_ptr, row_ptr, reqcnt_ptr, ready_ptr, b, rr // NT, rr % NT, K, V, NT, CHUNK,
                        HAS_DRAFT, BLOCK, ALIGNED, VEC, ROWS, NT_P2, KP)
    else:
        b = wave * WAVE + r // (P2 * NT)
        rr = r % (P2 * NT)
        if b < B:
            while tl.atomic_add(ready_ptr + b, 0, sem="acquire") == 0:
                pass
            n = tl.load(num_draft_ptr + b)
            _pass2_item(target_ptr, draft_ptr, xtok_ptr, temp_ptr, seed_ptr, step_ptr, posf_ptr, row_ptr, part_ptr,
                        q2_ptr, race_f_ptr, race_i_ptr, b, rr // NT, rr % NT, n, K, V, NT, CHUNK,
                        HAS_DRAFT, NEED_DIV, BLOCK, ALIGNED, VEC, ROWS, RACE_ROWS)
            tl.debug_barrier()
            if tl.atomic_add(fincnt_ptr + b, 1, sem="acq_rel") == P2 * NT - 1:
                _finish(target_ptr, draft_ptr, xtok_ptr, temp_ptr, seed_ptr, step_ptr, posf_ptr, row_ptr, part_ptr,
                        q2_ptr, race_f_ptr, race_i_ptr, out_tokens_ptr, out_nacc_ptr, out_nemit_ptr, div_ptr,
                        task_ptr, counts_ptr, hist_ptr, sums_ptr, rowsum_ptr, b, n, B, K, V, NT, HIST_W,
                        HAS_DRAFT, NEED_DIV, HAS_STATS, DETERMINISTIC, BLOCK, NT_P2, KP)


@triton.jit
def _task_reduce_kernel(
    task_ptr,    # [B] int64
    rowsum_ptr,  # [B, NSUM] float64
    sums_ptr,    # [T, NSUM] float64, added into
    B,
    BLOCK_B: tl.constexpr,
):
    t = tl.program_id(0)
    acc = tl.zeros([BLOCK_B, NSUM], tl.float64)
    cc = tl.arange(0, NSUM)
    for start in range(0, B, BLOCK_B):
        rows = start + tl.arange(0, BLOCK_B)
        rmask = rows < B
        tasks = tl.load(task_ptr + rows, mask=rmask, other=-1)
        vals = tl.load(rowsum_ptr + rows[:, None] * NSUM + cc[None, :], mask=rmask[:, None], other=0.0)
        acc += tl.where((tasks == t)[:, None], vals, 0.0)
    total = tl.sum(acc, 0)
    sp = sums_ptr + t.to(tl.int64) * NSUM + cc
    tl.store(sp, tl.load(sp) + total)


# --- launcher --------------------------------------------------------------------------------

MAX_CHUNK = 16384
"""Logits per tensor in one work item (GPU): 32-64 KB of bf16, so the last items of the
launch end soon after the others, while the per-item fixed cost (ticket, counters,
partials) stays small against the streaming time."""
L2_FRACTION = 3
"""A wave of requests reads at most L2 / L2_FRACTION bytes: pass 2 of wave w re-reads
rows read before the stats of wave w + 1, so about two waves must fit in L2."""


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _l2_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size
    return 50 * 2**20


def _vec(elem_bytes: int) -> int:
    return 16 // elem_bytes  # logits per 128-bit load


def _plan(B: int, K: int, V: int, elem_bytes: int, on_gpu: bool, num_sms: int, l2_bytes: int,
          block=None, chunk=None, num_warps=None, wave=None) -> dict:
    """Launch parameters of one call.  ``block`` (stats tile, logits per tensor and iteration,
    = 32 * num_warps * unroll * VEC), ``chunk``, ``num_warps`` and ``wave`` can be forced
    (``benchmarks/tune_verify.py`` sweeps them)."""
    vec = _vec(elem_bytes)
    K1 = K + 1
    if on_gpu:
        if num_warps is None:
            # Small batches need small items to spread over the SMs (B=1 is latency-bound).
            num_warps = 8 if B * K1 * triton.cdiv(V, 32 * 8 * RACE_GROUP) >= 2 * num_sms else 4
        threads = 32 * num_warps
        race_rows = threads  # one group of RACE_GROUP logits per thread and iteration
        rows = threads * 2 if block is None else block // vec  # 2 slots per thread: 4 loads in flight
        if rows < threads or rows % threads or (rows // threads) & (rows // threads - 1):
            raise ValueError(f"block={block} must be 32 * num_warps * VEC * (a power of two), "
                             f"num_warps={num_warps}, VEC={vec}")
        tile = race_rows * RACE_GROUP
        if chunk is None:
            nt = max(triton.cdiv(V, MAX_CHUNK), min(triton.cdiv(V, tile), triton.cdiv(4 * num_sms, B * K1)))
            chunk = triton.cdiv(V, nt)
        if wave is None:
            wave = max(1, l2_bytes // L2_FRACTION // ((2 * K + 1) * V * elem_bytes))
    else:  # the interpreter: tiny tiles and several chunks and waves, to exercise every path
        num_warps = num_warps or 1
        rows = 2 if block is None else max(1, block // vec)
        race_rows = 1
        tile = race_rows * RACE_GROUP
        if chunk is None:
            chunk = triton.cdiv(V, min(4, triton.cdiv(V, tile)))
        wave = wave or 2
    chunk = max(tile, triton.cdiv(chunk, tile) * tile)  # whole race tiles (and stats tiles)
    assert chunk % (rows * vec) == 0, (chunk, rows, vec)
    nt = triton.cdiv(V, chunk)
    return dict(num_warps=num_warps, ROWS=rows, RACE_ROWS=race_rows, VEC=vec, CHUNK=chunk, NT=nt,
                WAVE=min(wave, B), NT_P2=max(2, triton.next_power_of_2(nt)), KP=max(2, triton.next_power_of_2(K1)))


def launch_config(R: int, V: int, device: torch.device, block: int | None = None, chunk: int | None = None,
                  num_warps: int | None = None, K: int = 4, elem_bytes: int = 2):
    """(BLOCK, CHUNK, NT, num_warps) for R = B*(K+1) target rows: BLOCK logits per tensor and
    stats-loop iteration, CHUNK logits per work item, NT chunks per row."""
    device = torch.device(device)
    plan = _plan(max(1, R // (K + 1)), K, V, elem_bytes, device.type == "cuda", _sm_count(device),
                 _l2_bytes(device), block, chunk, num_warps)
    return plan["ROWS"] * plan["VEC"], plan["CHUNK"], plan["NT"], plan["num_warps"]


MODES = {"tokens": (False, False, False), "divergence": (True, False, False),
         "stats": (True, True, False), "stats_deterministic": (True, True, True)}
"""Call modes -> (NEED_DIV, HAS_STATS, DETERMINISTIC): TaskStats imply divergences."""
GPU_VARIANT = dict(ROWS=512, RACE_ROWS=256, NT_P2=64, KP=8)
"""Tile constexprs of the variants tests/compile_kernels.py compiles (8 warps, large batch).
With 4 warps the launcher halves ROWS and RACE_ROWS: the same code per thread."""


METHODS = ("token", "block")
"""verify(method=...): "block" compiles the BLOCK variant of `_verify_kernel`."""


def variant_constexprs(elem_bytes: int, has_draft: bool, mode: str, method: str = "token") -> dict:
    """The constexprs of the compiled `_verify_kernel` variant for a mode and method
    (tests/compile_kernels.py)."""
    need_div, has_stats, det = MODES[mode]
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return dict(HAS_DRAFT=has_draft, NEED_DIV=need_div, HAS_STATS=has_stats, DETERMINISTIC=det, ALIGNED=True,
                VEC=_vec(elem_bytes), **GPU_VARIANT, BLOCK=method == "block")


def work_model(B, K, V, elem_bytes, mode, num_sms=132, l2_bytes=50 * 2**20, has_draft=True,
               residual_fraction=1.0, method="token", candidates=1.0) -> list[dict]:
    """One dict per launch for a verify call of this shape, in launch order:
    {"kernel": kernel function name, "constexprs": the variant's constexpr dict (as listed in
     tests/compile_kernels.py), "num_warps": int, "programs": grid size,
     "loops": [{"elements": logits this hot loop processes over the whole grid}, ...] in the order the
     loops appear in the kernel source, "dram_bytes": bytes that must come from/go to DRAM (re-reads
     that should hit L2 are not counted; say so in "l2_bytes")}
    mode: "tokens" | "divergence" | "stats" | "stats_deterministic"; elem_bytes: 2 for bf16, 4 for fp32.

    Assumes every request drafts K tokens and samples (no greedy rows); ``residual_fraction``
    of the requests reject a draft and race the residual of a drafted row (target and draft
    logits), the others race the bonus row (target only).  Loops of `_verify_kernel`, in
    source order: stats of target+draft rows (HAS_DRAFT), stats of target-only rows, the
    residual race, the bonus race, the divergence sums (divergence modes).  The one memset
    of the sync words (a few bytes per row) precedes the kernel: "memset_bytes".  Re-reads
    count as L2 traffic when a wave of requests fits in ``l2_bytes / L2_FRACTION``, else as
    DRAM.

    ``method="block"`` (the BLOCK variant): ``residual_fraction`` of the requests do not
    accept every draft, and each races ``candidates`` positions on average (position 0 and
    the positions whose coin passes the cap w_i; between 1 and K), target and draft rows;
    the pass-2 items cover every position; race scratch is per position.
    """
    need_div, has_stats, det = MODES[mode]
    has_draft = has_draft and K > 0
    block = method == "block" and K > 0
    rf = residual_fraction if K > 0 else 0.0
    cands = candidates if block else 1.0
    if block and not 1.0 <= cands <= K:
        raise ValueError(f"candidates must lie in [1, K]=[1, {K}], got {candidates}")
    K1 = K + 1
    plan = _plan(B, K, V, elem_bytes, True, num_sms, l2_bytes)
    NT, WAVE = plan["NT"], plan["WAVE"]
    P2 = K1 if need_div or block else 1
    programs = triton.cdiv(B, WAVE) * WAVE * NT * (K1 + P2)
    BV = B * V
    tensors = 2 if has_draft else 1
    if has_draft:
        loops = [2 * K * BV, BV, round(2 * rf * cands * BV), round((1 - rf) * BV)]
    else:
        loops = [K1 * BV, round(rf * cands * BV), round((1 - rf) * BV)]
    rereads = round(((1 + (1 if has_draft else 0)) * rf * cands + (1 - rf)) * BV)  # the raced rows
    if need_div:
        div_rows = round((K - rf * cands) * BV)  # drafted rows other than the residual race rows
        loops.append(tensors * div_rows)
        rereads += tensors * div_rows
    logits = (K1 + (K if has_draft else 0)) * BV
    R = B * K1
    npart, npos, nrow, nrace, nq, ndiv, nsum = (int(c) for c in (NPART, NPOS, NROW, NRACE, NQ, NDIV, NSUM))
    race_rows = R if block else B
    scratch = 4 * (R * NT * (npart + 1) + R * npos + B * nrow + race_rows * NT * 2 * nrace
                   + (R * NT * nq if need_div else 0))
    outputs = B * K1 * 8 + 2 * B * 4 + (ndiv * B * K * 4 if need_div else 0) + (B * nsum * 8 if det else 0)
    reread_bytes = rereads * elem_bytes
    fits = (2 * K + 1) * V * elem_bytes * WAVE <= l2_bytes // L2_FRACTION
    dram = logits * elem_bytes + 2 * scratch + outputs + (0 if fits else reread_bytes)
    out = [{"kernel": "_verify_kernel", "constexprs": variant_constexprs(elem_bytes, has_draft, mode,
                                                                         "block" if block else "token"),
            "num_warps": plan["num_warps"], "programs": programs, "loops": [{"elements": e} for e in loops],
            "dram_bytes": dram, "l2_bytes": reread_bytes if fits else 0, "memset_bytes": 4 * (1 + 3 * B)}]
    if det:
        T = 1  # TaskStats.num_tasks is not part of the shape; one program per task
        out.append({"kernel": "_task_reduce_kernel", "constexprs": dict(BLOCK_B=min(triton.next_power_of_2(B), 256)),
                    "num_warps": 4, "programs": T, "loops": [], "dram_bytes": B * (nsum * 8 + 8), "l2_bytes": 0})
    return out


def _aligned(t: torch.Tensor | None, vec: int) -> bool:
    return t is None or (t.data_ptr() % 16 == 0 and t.shape[-1] % vec == 0)


def launch(target, draft, draft_tokens, num_draft, temperature, seed, step, need_div,
           task_ids=None, stats=None, block=None, chunk=None, num_warps=None, wave=None, method="token"):
    """Canonical inputs (see api.verify); updates ``stats`` in place; no host sync.
    ``method`` "token" | "block" (the BLOCK variant); ``block`` is the stats tile (see `_plan`).

    Returns (tokens [B, K+1] int64, num_accepted [B] int32, num_emitted [B] int32,
    {field: [B, K] fp32} in DIVERGENCE_FIELDS order, or None without ``need_div``).
    """
    B, K1, V = target.shape
    K = K1 - 1
    dev = target.device
    has_draft = draft is not None
    draft_arg = draft if has_draft else target
    eb = min(target.element_size(), draft.element_size() if has_draft else 16)
    plan = _plan(B, K, V, eb, dev.type == "cuda", _sm_count(dev), _l2_bytes(dev), block, chunk, num_warps, wave)
    NT, WAVE = plan["NT"], plan["WAVE"]
    aligned = _aligned(target, plan["VEC"]) and _aligned(draft, plan["VEC"])
    R = B * K1
    f32, i32 = torch.float32, torch.int32
    part = torch.empty(R, NT, NPART, dtype=f32, device=dev)
    pidx = torch.empty(R, NT, dtype=i32, device=dev)
    posf = torch.empty(R, NPOS, dtype=f32, device=dev)
    row = torch.empty(B, NROW, dtype=i32, device=dev)
    q2 = torch.empty(R if need_div else 1, NT, NQ, dtype=f32, device=dev)
    is_block = method == "block" and K > 0
    race_rows = R if is_block else B  # block mode: every candidate position races
    race_f = torch.empty(race_rows, NT, NRACE, dtype=f32, device=dev)
    race_i = torch.empty(race_rows, NT, NRACE, dtype=i32, device=dev)
    sync = torch.zeros(1 + 3 * B, dtype=i32, device=dev)  # the one memset of the call
    ticket, reqcnt, ready, fincnt = sync.split([1, B, B, B])
    tokens = torch.empty(B, K1, dtype=torch.int64, device=dev)
    n_acc = torch.empty(B, dtype=i32, device=dev)
    n_emit = torch.empty(B, dtype=i32, device=dev)
    div = torch.empty(NDIV, B, K, dtype=f32, device=dev) if need_div else n_acc
    has_stats = stats is not None
    deterministic = has_stats and stats.deterministic
    rowsum = torch.empty(B, NSUM, dtype=torch.float64, device=dev) if deterministic else n_acc
    if has_stats:
        s_task, s_counts, s_hist, s_sums, hist_w = task_ids, stats.counts, stats.hist, stats.sums, stats.max_draft + 1
    else:
        s_task = s_counts = s_hist = s_sums = n_acc
        hist_w = 1
    nw = triton.cdiv(B, WAVE)
    grid = (nw * WAVE * NT * (K1 + (K1 if need_div or is_block else 1)),)
    _verify_kernel[grid](
        target, draft_arg, draft_tokens, num_draft, temperature, seed, step, part, pidx, posf, row, q2,
        race_f, race_i, ticket, reqcnt, ready, fincnt, tokens, n_acc, n_emit, div,
        s_task, s_counts, s_hist, s_sums, rowsum, B, K, V, NT, plan["CHUNK"], WAVE, hist_w,
        HAS_DRAFT=has_draft, NEED_DIV=need_div, HAS_STATS=has_stats, DETERMINISTIC=deterministic,
        ALIGNED=aligned, VEC=plan["VEC"], ROWS=plan["ROWS"], RACE_ROWS=plan["RACE_ROWS"],
        NT_P2=plan["NT_P2"], KP=plan["KP"], BLOCK=is_block, num_warps=plan["num_warps"])
    if deterministic:
        _task_reduce_kernel[(stats.num_tasks,)](task_ids, rowsum, stats.sums, B,
                                                BLOCK_B=min(triton.next_power_of_2(B), 256))
    out_div = dict(zip(_stats.DIVERGENCE_FIELDS, div.unbind(0))) if need_div else None
    return tokens, n_acc, n_emit, out_div
