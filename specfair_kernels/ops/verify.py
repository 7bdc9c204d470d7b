"""Triton kernels for `specfair_kernels.verify` (semantics: `specfair_kernels.reference`).

Four launches, no host synchronisation (CUDA-graph capturable):

1. ``_tile_stats_kernel``   grid (B*(K+1), NT): one vocabulary chunk of one position.
   Per-lane online max / sum-exp of the target and draft logits (fp32), the first
   argmax, the NaN/+inf flag, and with divergence the online sums of p·(a - m_a) and
   p·(d - m_d) from which H(p) and CE(p, q) follow.  One read of every used logit.
2. ``_row_accept_kernel``   grid (B,): merges the chunk partials per position into
   logsumexps, H, CE, KL; runs the accept chain; decides the sampling position/mode.
3. ``_pass2_kernel``        grid (B*(K+1), NT): alpha = sum min(p, q) per chunk (it
   needs both normalisers, hence a second read) at drafted positions when divergence
   is asked, and the exponential race at the single sampling position of each row.
4. ``_finish_kernel``       grid (B,): merges the race, writes tokens/counts/divergences
   and adds the row into the TaskStats (atomics; integer counters exact).  With
   deterministic stats, ``_task_reduce_kernel`` (grid (T,)) sums float rows per task in
   a fixed order instead.

Splitting the vocabulary across NT programs per position keeps the GPU busy at B=1.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import stats as _stats
from .rng import STREAM_ACCEPT, STREAM_RACE, exponential, philox_word0, uniform_accept

# Globals read inside kernels must be tl.constexpr objects (they also work as ints on the host).
C = tl.constexpr
NF = C(7)  # chunk partial fields: m_a, z_a, s_a, m_d, z_d, s_d, bad
F_MA, F_ZA, F_SA, F_MD, F_ZD, F_SD, F_BAD = (C(i) for i in range(7))
NP = C(6)  # per-position fields: lse_a, lse_d, H, CE, KL, log p(x)
BIG_INDEX = C(2**30)
MODE_GREEDY, MODE_RESIDUAL, MODE_BONUS = C(0), C(1), C(2)
# TaskStats.counts columns, as compile-time constants
NCOUNT = C(len(_stats.COUNT_NAMES))
C_DRAFTED = C(_stats.COUNT_DRAFTED)
C_ACCEPTED = C(_stats.COUNT_ACCEPTED)
C_EMITTED = C(_stats.COUNT_EMITTED)
C_STEPS = C(_stats.COUNT_STEPS)
C_INVALID = C(_stats.COUNT_INVALID)
C_TESTED = C(_stats.COUNT_TESTED)


@triton.jit
def _tile_stats_kernel(
    target_ptr,     # [B, K+1, V] fp32 | bf16 | fp16
    draft_ptr,      # [B, K, V]   fp32 | bf16 | fp16 (unused without HAS_DRAFT)
    num_draft_ptr,  # [B] int64
    temp_ptr,       # [B] fp32 (0 = greedy, treated as 1 here)
    part_ptr,       # [B*(K+1), NT, NF] fp32 out
    pidx_ptr,       # [B*(K+1), NT] int32 out: first argmax of the target in the chunk
    K, V, NT, CHUNK,
    HAS_DRAFT: tl.constexpr, NEED_DIV: tl.constexpr, BLOCK: tl.constexpr,
):
    r = tl.program_id(0)
    t = tl.program_id(1)
    b = r // (K + 1)
    j = r % (K + 1)
    n = tl.load(num_draft_ptr + b)
    if j <= n:
        tau = tl.load(temp_ptr + b)
        tau = tl.where(tau > 0, tau, 1.0)
        has_d = HAS_DRAFT & (j < n)
        t_row = target_ptr + r.to(tl.int64) * V
        d_row = draft_ptr + (b.to(tl.int64) * K + j) * V
        lane = tl.arange(0, BLOCK)
        neg_inf = float("-inf")
        m_a = tl.full([BLOCK], neg_inf, tl.float32)
        z_a = tl.zeros([BLOCK], tl.float32)
        s_a = tl.zeros([BLOCK], tl.float32)
        m_d = tl.full([BLOCK], neg_inf, tl.float32)
        z_d = tl.zeros([BLOCK], tl.float32)
        s_d = tl.zeros([BLOCK], tl.float32)
        arg = tl.full([BLOCK], BIG_INDEX, tl.int32)
        bad = tl.zeros([BLOCK], tl.int32)
        c_start = t * CHUNK
        for off in range(0, CHUNK, BLOCK):
            cols = c_start + off + lane
            mask = (cols < V) & (off + lane < CHUNK)
            a = tl.load(t_row + cols, mask=mask, other=neg_inf).to(tl.float32) / tau
            bad = bad | ((a != a) | (a == float("inf"))).to(tl.int32)
            new_m = tl.maximum(m_a, a)
            old_ok = m_a > neg_inf
            scale = tl.where(old_ok, tl.exp(m_a - new_m), 0.0)
            e = tl.where(a > neg_inf, tl.exp(a - new_m), 0.0)
            if NEED_DIV:  # sum e^(a - m_a) (a - m_a), rescaled when m_a moves
                s_a = scale * (s_a + tl.where(old_ok, m_a - new_m, 0.0) * z_a) \
                    + tl.where(e > 0, e * (a - new_m), 0.0)
            if has_d:
                d = tl.load(d_row + cols, mask=mask, other=neg_inf).to(tl.float32) / tau
                bad = bad | ((d != d) | (d == float("inf"))).to(tl.int32)
                new_md = tl.maximum(m_d, d)
                d_ok = m_d > neg_inf
                if NEED_DIV:  # sum e^(a - m_a) (d - m_d); uses z_a before this tile is added
                    s_d = scale * (s_d + tl.where(d_ok, m_d - new_md, 0.0) * z_a) \
                        + tl.where(e > 0, tl.where(d > neg_inf, e * (d - new_md), neg_inf), 0.0)
                z_d = tl.where(d_ok, tl.exp(m_d - new_md), 0.0) * z_d \
                    + tl.where(d > neg_inf, tl.exp(d - new_md), 0.0)
                m_d = new_md
            z_a = scale * z_a + e
            arg = tl.where(a > m_a, cols, arg)  # strict: keeps the first maximum of each lane
            m_a = new_m
        # merge the lanes
        M_a = tl.max(m_a, 0)
        ok = m_a > neg_inf
        sc = tl.where(ok, tl.exp(m_a - M_a), 0.0)
        Z_a = tl.sum(z_a * sc, 0)
        idx = tl.min(tl.where(m_a == M_a, arg, BIG_INDEX), 0)
        base = part_ptr + (r.to(tl.int64) * NT + t) * NF
        tl.store(base + F_MA, M_a)
        tl.store(base + F_ZA, Z_a)
        tl.store(base + F_BAD, tl.max(bad, 0).to(tl.float32))
        tl.store(pidx_ptr + r.to(tl.int64) * NT + t, idx)
        if NEED_DIV:
            tl.store(base + F_SA, tl.sum(sc * (s_a + tl.where(ok, m_a - M_a, 0.0) * z_a), 0))
        if has_d:
            M_d = tl.max(m_d, 0)
            dk = m_d > neg_inf
            tl.store(base + F_MD, M_d)
            tl.store(base + F_ZD, tl.sum(z_d * tl.where(dk, tl.exp(m_d - M_d), 0.0), 0))
            if NEED_DIV:
                tl.store(base + F_SD, tl.sum(sc * (s_d + tl.where(dk, m_d - M_d, 0.0) * z_a), 0))


@triton.jit
def _row_accept_kernel(
    target_ptr,     # [B, K+1, V] fp32 | bf16 | fp16
    draft_ptr,      # [B, K, V]   fp32 | bf16 | fp16 (unused without HAS_DRAFT)
    tokens_ptr,     # [B, K] int64 drafted tokens
    num_draft_ptr,  # [B] int64
    temp_ptr,       # [B] fp32
    seed_ptr,       # [B] int64
    step_ptr,       # [B] int64
    part_ptr,       # [B*(K+1), NT, NF] fp32 in
    pidx_ptr,       # [B*(K+1), NT] int32 in
    posf_ptr,       # [B, K+1, NP] fp32 out
    row_ptr,        # [B, 4] int32 out: num_accepted, mode, greedy token, bad
    K, V, NT,
    HAS_DRAFT: tl.constexpr, NEED_DIV: tl.constexpr, NT_P2: tl.constexpr, KP: tl.constexpr,
):
    b = tl.program_id(0)
    n = tl.load(num_draft_ptr + b)
    temp = tl.load(temp_ptr + b)
    greedy = temp == 0
    tau = tl.where(greedy, 1.0, temp)
    neg_inf = float("-inf")
    tt = tl.arange(0, NT_P2)
    tmask = tt < NT
    jj = tl.arange(0, KP)
    lse_a_v = tl.zeros([KP], tl.float32)
    lse_d_v = tl.zeros([KP], tl.float32)
    logp_v = tl.zeros([KP], tl.float32)
    argmax_v = tl.zeros([KP], tl.int32)
    bad = tl.zeros([], tl.int32)
    for j in range(0, K + 1):
        if j <= n:
            r = b.to(tl.int64) * (K + 1) + j
            base = part_ptr + (r * NT + tt) * NF
            ma = tl.load(base + F_MA, mask=tmask, other=neg_inf)
            za = tl.load(base + F_ZA, mask=tmask, other=0.0)
            bad = bad | (tl.max(tl.load(base + F_BAD, mask=tmask, other=0.0), 0) > 0).to(tl.int32)
            M = tl.max(ma, 0)
            ok = ma > neg_inf
            sc = tl.where(ok, tl.exp(ma - M), 0.0)
            Z = tl.sum(za * sc, 0)
            bad = bad | (M == neg_inf).to(tl.int32)
            lse_a = M + tl.log(Z)
            pid = tl.load(pidx_ptr + r * NT + tt, mask=tmask, other=BIG_INDEX)
            amax = tl.min(tl.where(ma == M, pid, BIG_INDEX), 0)
            lse_a_v = tl.where(jj == j, lse_a, lse_a_v)
            argmax_v = tl.where(jj == j, amax, argmax_v)
            H = tl.full([], 0.0, tl.float32)
            CE = tl.full([], 0.0, tl.float32)
            KL = tl.full([], 0.0, tl.float32)
            if NEED_DIV:
                sa = tl.load(base + F_SA, mask=tmask, other=0.0)
                H = tl.log(Z) - tl.sum(sc * (sa + tl.where(ok, ma - M, 0.0) * za), 0) / Z
            if j < n:
                x = tl.minimum(tl.maximum(tl.load(tokens_ptr + b.to(tl.int64) * K + j), 0), V - 1)
                logp = tl.load(target_ptr + r * V + x).to(tl.float32) / tau - lse_a
                logp_v = tl.where(jj == j, logp, logp_v)
                if HAS_DRAFT:
                    md = tl.load(base + F_MD, mask=tmask, other=neg_inf)
                    zd = tl.load(base + F_ZD, mask=tmask, other=0.0)
                    MD = tl.max(md, 0)
                    dk = md > neg_inf
                    ZD = tl.sum(zd * tl.where(dk, tl.exp(md - MD), 0.0), 0)
                    bad = bad | (MD == neg_inf).to(tl.int32)
                    lse_d = MD + tl.log(ZD)
                    lse_d_v = tl.where(jj == j, lse_d, lse_d_v)
                    if NEED_DIV:
                        sd = tl.load(base + F_SD, mask=tmask, other=0.0)
                        SD = tl.sum(sc * (sd + tl.where(dk, md - MD, 0.0) * za), 0)
                        CE = tl.log(ZD) - SD / Z
                        KL = CE - H
                else:
                    CE = tl.where(tl.exp(logp) >= 1.0, 0.0, float("inf"))
                    KL = CE
            if NEED_DIV:
                pbase = posf_ptr + (b.to(tl.int64) * (K + 1) + j) * NP
                tl.store(pbase + 2, H)
                tl.store(pbase + 3, CE)
                tl.store(pbase + 4, KL)
    # the accept chain, from values kept in registers
    seed = tl.load(seed_ptr + b)
    step = tl.load(step_ptr + b)
    n_acc = tl.zeros([], tl.int32)
    going = tl.full([], 1, tl.int32)
    for j in range(0, K):
        if (j < n) & (going == 1):
            x = tl.minimum(tl.maximum(tl.load(tokens_ptr + b.to(tl.int64) * K + j), 0), V - 1)
            if greedy:
                acc = x == tl.sum(tl.where(jj == j, argmax_v, 0), 0)
            else:
                logp = tl.sum(tl.where(jj == j, logp_v, 0.0), 0)
                logq = 0.0
                if HAS_DRAFT:
                    logq = tl.load(draft_ptr + (b.to(tl.int64) * K + j) * V + x).to(tl.float32) / tau \
                        - tl.sum(tl.where(jj == j, lse_d_v, 0.0), 0)
                u = uniform_accept(philox_word0(seed, 0, j, step, STREAM_ACCEPT))
                acc = (logp > neg_inf) & (tl.log(u) + logq <= logp)
            if acc:
                n_acc += 1
            else:
                going = 0
    # per-position normalisers for pass 2
    pmask = jj <= n
    pbase = posf_ptr + (b.to(tl.int64) * (K + 1) + jj) * NP
    tl.store(pbase + 0, lse_a_v, mask=pmask)
    tl.store(pbase + 1, lse_d_v, mask=pmask)
    tl.store(pbase + 5, logp_v, mask=pmask)
    mode = tl.where(greedy, MODE_GREEDY, tl.where(n_acc < n, MODE_RESIDUAL, MODE_BONUS))
    gtok = tl.sum(tl.where(jj == n_acc, argmax_v, 0), 0)
    rb = row_ptr + b * 4
    tl.store(rb + 0, n_acc)
    tl.store(rb + 1, mode)
    tl.store(rb + 2, gtok)
    tl.store(rb + 3, bad)


@triton.jit
def _pass2_kernel(
    target_ptr,     # [B, K+1, V] fp32 | bf16 | fp16
    draft_ptr,      # [B, K, V]   fp32 | bf16 | fp16 (unused without HAS_DRAFT)
    tokens_ptr,     # [B, K] int64
    num_draft_ptr,  # [B] int64
    temp_ptr,       # [B] fp32
    seed_ptr,       # [B] int64
    step_ptr,       # [B] int64
    posf_ptr,       # [B, K+1, NP] fp32 in
    row_ptr,        # [B, 4] int32 in
    alpha_ptr,      # [B*(K+1), NT] fp32 out: chunk sums of min(p, q)
    race_f_ptr,     # [B, NT, 2] fp32 out: best residual / bonus race score in the chunk
    race_i_ptr,     # [B, NT, 2] int32 out: their indices
    K, V, NT, CHUNK,
    HAS_DRAFT: tl.constexpr, NEED_DIV: tl.constexpr, BLOCK: tl.constexpr,
):
    # Reverse of the stats pass's dispatch order: the chunks it read last are the likeliest
    # to still be in L2 when this pass starts (a re-read that hits L2 costs no HBM traffic).
    # Correctness does not depend on the order; the gain is unmeasured so far.
    r = tl.num_programs(0) - 1 - tl.program_id(0)
    t = tl.num_programs(1) - 1 - tl.program_id(1)
    b = r // (K + 1)
    j = r % (K + 1)
    n = tl.load(num_draft_ptr + b)
    n_acc = tl.load(row_ptr + b * 4 + 0)
    mode = tl.load(row_ptr + b * 4 + 1)
    valid = tl.load(row_ptr + b * 4 + 3) == 0
    do_alpha = NEED_DIV & (j < n) & valid
    do_race = (j == n_acc) & (mode != MODE_GREEDY) & valid
    if do_alpha | do_race:
        temp = tl.load(temp_ptr + b)
        tau = tl.where(temp > 0, temp, 1.0)
        pbase = posf_ptr + r.to(tl.int64) * NP
        lse_a = tl.load(pbase + 0)
        lse_d = tl.load(pbase + 1)
        has_q = j < n
        x = tl.minimum(tl.maximum(tl.load(tokens_ptr + b.to(tl.int64) * K + tl.minimum(j, K - 1), mask=K > 0,
                                          other=0), 0), V - 1)
        seed = tl.load(seed_ptr + b)
        step = tl.load(step_ptr + b)
        residual = mode == MODE_RESIDUAL
        t_row = target_ptr + r.to(tl.int64) * V
        d_row = draft_ptr + (b.to(tl.int64) * K + j) * V
        lane = tl.arange(0, BLOCK)
        neg_inf = float("-inf")
        acc_alpha = tl.zeros([BLOCK], tl.float32)
        best_r = tl.full([BLOCK], neg_inf, tl.float32)
        best_p = tl.full([BLOCK], neg_inf, tl.float32)
        idx_r = tl.full([BLOCK], BIG_INDEX, tl.int32)
        idx_p = tl.full([BLOCK], BIG_INDEX, tl.int32)
        c_start = t * CHUNK
        for off in range(0, CHUNK, BLOCK):
            cols = c_start + off + lane
            mask = (cols < V) & (off + lane < CHUNK)
            a = tl.load(t_row + cols, mask=mask, other=neg_inf).to(tl.float32) / tau
            p = tl.where(a > neg_inf, tl.exp(a - lse_a), 0.0)
            q = tl.zeros([BLOCK], tl.float32)
            if has_q:
                if HAS_DRAFT:
                    d = tl.load(d_row + cols, mask=mask, other=neg_inf).to(tl.float32) / tau
                    q = tl.where(d > neg_inf, tl.exp(d - lse_d), 0.0)
                else:
                    q = tl.where(cols == x, 1.0, 0.0)
            if do_alpha:
                acc_alpha += tl.where(mask, tl.minimum(p, q), 0.0)
            if do_race:
                log_e = tl.log(exponential(philox_word0(seed, cols, j, step, STREAM_RACE)))
                sp = tl.where(mask & (a > neg_inf), a - log_e, neg_inf)
                better = sp > best_p
                best_p = tl.where(better, sp, best_p)
                idx_p = tl.where(better, cols, idx_p)
                if residual:
                    res = tl.maximum(p - q, 0.0)
                    sr = tl.where(mask & (res > 0), tl.log(res) - log_e, neg_inf)
                    better = sr > best_r
                    best_r = tl.where(better, sr, best_r)
                    idx_r = tl.where(better, cols, idx_r)
        if do_alpha:
            tl.store(alpha_ptr + r.to(tl.int64) * NT + t, tl.sum(acc_alpha, 0))
        if do_race:
            rbase = (b.to(tl.int64) * NT + t) * 2
            vr = tl.max(best_r, 0)
            vp = tl.max(best_p, 0)
            tl.store(race_f_ptr + rbase + 0, vr)
            tl.store(race_f_ptr + rbase + 1, vp)
            tl.store(race_i_ptr + rbase + 0, tl.min(tl.where(best_r == vr, idx_r, BIG_INDEX), 0))
            tl.store(race_i_ptr + rbase + 1, tl.min(tl.where(best_p == vp, idx_p, BIG_INDEX), 0))


@triton.jit
def _finish_kernel(
    tokens_ptr,     # [B, K] int64 drafted tokens
    num_draft_ptr,  # [B] int64
    row_ptr,        # [B, 4] int32
    posf_ptr,       # [B, K+1, NP] fp32
    alpha_ptr,      # [B*(K+1), NT] fp32
    race_f_ptr,     # [B, NT, 2] fp32
    race_i_ptr,     # [B, NT, 2] int32
    out_tokens_ptr,  # [B, K+1] int64 out
    out_nacc_ptr,   # [B] int32 out
    out_nemit_ptr,  # [B] int32 out
    div_ptr,        # [4, B, K] fp32 out (alpha, kl, ce, entropy) when RETURN_DIV
    task_ptr,       # [B] int64 task ids (HAS_STATS)
    counts_ptr,     # [T, NCOUNT] int64 TaskStats.counts
    hist_ptr,       # [T, K_max+1] int64 TaskStats.hist
    sums_ptr,       # [T, 4] float64 TaskStats.sums (atomics unless DETERMINISTIC)
    rowsum_ptr,     # [B, 4] float64 out: per-row divergence sums (DETERMINISTIC)
    B, K, NT, HIST_W,
    NEED_DIV: tl.constexpr, RETURN_DIV: tl.constexpr, HAS_STATS: tl.constexpr,
    DETERMINISTIC: tl.constexpr, NT_P2: tl.constexpr, KP: tl.constexpr,
):
    b = tl.program_id(0)
    n = tl.load(num_draft_ptr + b)
    n_acc = tl.load(row_ptr + b * 4 + 0)
    mode = tl.load(row_ptr + b * 4 + 1)
    gtok = tl.load(row_ptr + b * 4 + 2)
    bad_i = tl.load(row_ptr + b * 4 + 3)
    bad = bad_i != 0
    neg_inf = float("-inf")
    tt = tl.arange(0, NT_P2)
    tmask = tt < NT
    tok = gtok.to(tl.int64)
    if mode != MODE_GREEDY:
        if bad_i == 0:
            rbase = (b.to(tl.int64) * NT + tt) * 2
            vr = tl.load(race_f_ptr + rbase + 0, mask=tmask, other=neg_inf)
            vp = tl.load(race_f_ptr + rbase + 1, mask=tmask, other=neg_inf)
            ir = tl.load(race_i_ptr + rbase + 0, mask=tmask, other=BIG_INDEX)
            ip = tl.load(race_i_ptr + rbase + 1, mask=tmask, other=BIG_INDEX)
            best_r = tl.max(vr, 0)
            best_p = tl.max(vp, 0)
            tok_r = tl.min(tl.where(vr == best_r, ir, BIG_INDEX), 0)
            tok_p = tl.min(tl.where(vp == best_p, ip, BIG_INDEX), 0)
            use_r = (mode == MODE_RESIDUAL) & (best_r > neg_inf)
            tok = tl.where(use_r, tok_r, tok_p).to(tl.int64)
    jj = tl.arange(0, KP)
    drafted = tl.load(tokens_ptr + b.to(tl.int64) * K + jj, mask=jj < K, other=-1)
    out = tl.where(jj < n_acc, drafted, tl.where(jj == n_acc, tok, -1))
    out = tl.where(bad, -1, out)
    tl.store(out_tokens_ptr + b.to(tl.int64) * (K + 1) + jj, out, mask=jj < K + 1)
    n_acc_out = tl.where(bad, 0, n_acc)
    tl.store(out_nacc_ptr + b, n_acc_out)
    tl.store(out_nemit_ptr + b, tl.where(bad, 0, n_acc + 1))
    if NEED_DIV:
        used = jj < n
        amat = tl.load(alpha_ptr + (b.to(tl.int64) * (K + 1) + jj[:, None]) * NT + tt[None, :],
                       mask=used[:, None] & tmask[None, :], other=0.0)
        alpha = tl.sum(amat, 1)
        pbase = posf_ptr + (b.to(tl.int64) * (K + 1) + jj) * NP
        ent = tl.load(pbase + 2, mask=used, other=0.0)
        ce = tl.load(pbase + 3, mask=used, other=0.0)
        kl = tl.load(pbase + 4, mask=used, other=0.0)
        if RETURN_DIV:
            nan = float("nan")
            dmask = jj < K
            o = b.to(tl.int64) * K + jj
            # the grid is (B,); B itself is not used here because Triton specialises an
            # integer argument equal to 1 into a Python constant, which has no .to()
            BK = tl.num_programs(0).to(tl.int64) * K
            tl.store(div_ptr + o, tl.where(used, tl.where(bad, nan, alpha), 0.0), mask=dmask)
            tl.store(div_ptr + BK + o, tl.where(used, tl.where(bad, nan, kl), 0.0), mask=dmask)
            tl.store(div_ptr + 2 * BK + o, tl.where(used, tl.where(bad, nan, ce), 0.0), mask=dmask)
            tl.store(div_ptr + 3 * BK + o, tl.where(used, tl.where(bad, nan, ent), 0.0), mask=dmask)
        if HAS_STATS:
            # an invalid row adds nothing (its values are NaN or were never computed)
            s_alpha = tl.where(bad, 0.0, tl.sum(tl.where(used, alpha, 0.0).to(tl.float64), 0))
            s_kl = tl.where(bad, 0.0, tl.sum(tl.where(used, kl, 0.0).to(tl.float64), 0))
            s_ce = tl.where(bad, 0.0, tl.sum(tl.where(used, ce, 0.0).to(tl.float64), 0))
            s_h = tl.where(bad, 0.0, tl.sum(tl.where(used, ent, 0.0).to(tl.float64), 0))
            task = tl.load(task_ptr + b)
            if DETERMINISTIC:
                rs = rowsum_ptr + b.to(tl.int64) * 4
                tl.store(rs + 0, s_alpha)
                tl.store(rs + 1, s_kl)
                tl.store(rs + 2, s_ce)
                tl.store(rs + 3, s_h)
            else:
                if bad_i == 0:
                    sp = sums_ptr + task * 4
                    tl.atomic_add(sp + 0, s_alpha)
                    tl.atomic_add(sp + 1, s_kl)
                    tl.atomic_add(sp + 2, s_ce)
                    tl.atomic_add(sp + 3, s_h)
            cp = counts_ptr + task * NCOUNT
            if bad_i != 0:
                tl.atomic_add(cp + C_INVALID, 1)
            else:
                tl.atomic_add(cp + C_DRAFTED, n)
                tl.atomic_add(cp + C_ACCEPTED, n_acc.to(tl.int64))
                tl.atomic_add(cp + C_EMITTED, n_acc.to(tl.int64) + 1)
                tl.atomic_add(cp + C_STEPS, 1)
                tl.atomic_add(cp + C_TESTED, n_acc.to(tl.int64) + (n_acc < n).to(tl.int64))
                tl.atomic_add(hist_ptr + task * HIST_W + n_acc, 1)


@triton.jit
def _task_reduce_kernel(
    task_ptr,    # [B] int64
    rowsum_ptr,  # [B, 4] float64
    sums_ptr,    # [T, 4] float64, added into
    B,
    BLOCK_B: tl.constexpr,
):
    t = tl.program_id(0)
    acc = tl.zeros([BLOCK_B, 4], tl.float64)
    cc = tl.arange(0, 4)
    for start in range(0, B, BLOCK_B):
        rows = start + tl.arange(0, BLOCK_B)
        rmask = rows < B
        tasks = tl.load(task_ptr + rows, mask=rmask, other=-1)
        vals = tl.load(rowsum_ptr + rows[:, None] * 4 + cc[None, :], mask=rmask[:, None], other=0.0)
        acc += tl.where((tasks == t)[:, None], vals, 0.0)
    total = tl.sum(acc, 0)
    sp = sums_ptr + t.to(tl.int64) * 4 + cc
    tl.store(sp, tl.load(sp) + total)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def launch_config(R: int, V: int, device: torch.device, block: int | None = None, chunk: int | None = None,
                  num_warps: int | None = None):
    """Pick (BLOCK, CHUNK, NT, num_warps): enough programs to fill the GPU at small batch.
    Each can be forced (``benchmarks/tune_verify.py`` sweeps them)."""
    if block is None:
        # 1024 lanes x 8 warps = 4 elements per thread: 60-80 registers for the tile kernels
        # on sm_90 (ptxas), ~3 programs per SM; 2048 lanes needed 121-174 (1-2 per SM).
        block = min(triton.next_power_of_2(V), 1024 if device.type == "cuda" else 256)
    if chunk is None:
        want = 4 * _sm_count(device)  # programs in flight per launch
        nt = max(1, min(triton.cdiv(want, R), triton.cdiv(V, block)))
        chunk = triton.cdiv(triton.cdiv(V, nt), block) * block
    chunk = max(block, triton.cdiv(chunk, block) * block)
    nt = triton.cdiv(V, chunk)
    if num_warps is None:
        num_warps = 8 if block >= 1024 else 4
    return block, chunk, nt, num_warps


def verify(target, draft, draft_tokens, num_draft, temperature, seed, step, need_div,
           task_ids=None, stats=None, return_div=True, block=None, chunk=None, num_warps=None):
    """Canonical inputs (see api.verify); updates ``stats`` in place; no host sync."""
    B, K1, V = target.shape
    K = K1 - 1
    dev = target.device
    has_draft = draft is not None
    draft_arg = draft if has_draft else target
    R = B * K1
    BLOCK, CHUNK, NT, num_warps = launch_config(R, V, dev, block, chunk, num_warps)
    NT_P2 = max(2, triton.next_power_of_2(NT))
    KP = max(2, triton.next_power_of_2(K1))
    part = torch.empty(R, NT, NF, dtype=torch.float32, device=dev)
    pidx = torch.empty(R, NT, dtype=torch.int32, device=dev)
    posf = torch.empty(B, K1, NP, dtype=torch.float32, device=dev)
    row = torch.empty(B, 4, dtype=torch.int32, device=dev)
    alpha_part = torch.empty(R if need_div else 1, NT, dtype=torch.float32, device=dev)
    race_f = torch.empty(B, NT, 2, dtype=torch.float32, device=dev)
    race_i = torch.empty(B, NT, 2, dtype=torch.int32, device=dev)
    tokens = torch.empty(B, K1, dtype=torch.int64, device=dev)
    n_acc = torch.empty(B, dtype=torch.int32, device=dev)
    n_emit = torch.empty(B, dtype=torch.int32, device=dev)
    div = torch.empty(4, B, K, dtype=torch.float32, device=dev) if need_div else n_acc

    _tile_stats_kernel[(R, NT)](target, draft_arg, num_draft, temperature, part, pidx, K, V, NT, CHUNK,
                                HAS_DRAFT=has_draft, NEED_DIV=need_div, BLOCK=BLOCK, num_warps=num_warps)
    _row_accept_kernel[(B,)](target, draft_arg, draft_tokens, num_draft, temperature, seed, step, part, pidx,
                             posf, row, K, V, NT, HAS_DRAFT=has_draft, NEED_DIV=need_div, NT_P2=NT_P2, KP=KP)
    _pass2_kernel[(R, NT)](target, draft_arg, draft_tokens, num_draft, temperature, seed, step, posf, row,
                           alpha_part, race_f, race_i, K, V, NT, CHUNK,
                           HAS_DRAFT=has_draft, NEED_DIV=need_div, BLOCK=BLOCK, num_warps=num_warps)
    has_stats = stats is not None
    deterministic = has_stats and stats.deterministic
    rowsum = torch.empty(B, 4, dtype=torch.float64, device=dev) if deterministic else n_acc
    if has_stats:
        s_task, s_counts, s_hist, s_sums, hist_w = task_ids, stats.counts, stats.hist, stats.sums, stats.max_draft + 1
    else:
        s_task = s_counts = s_hist = s_sums = n_acc
        hist_w = 1
    _finish_kernel[(B,)](draft_tokens, num_draft, row, posf, alpha_part, race_f, race_i, tokens, n_acc, n_emit,
                         div, s_task, s_counts, s_hist, s_sums, rowsum, B, K, NT, hist_w,
                         NEED_DIV=need_div, RETURN_DIV=need_div, HAS_STATS=has_stats,
                         DETERMINISTIC=deterministic, NT_P2=NT_P2, KP=KP)
    if deterministic:
        _task_reduce_kernel[(stats.num_tasks,)](task_ids, rowsum, stats.sums, B,
                                                BLOCK_B=min(triton.next_power_of_2(B), 256))
    out_div = None
    if need_div:
        out_div = dict(zip(("alpha", "kl", "ce", "entropy"), div.unbind(0)))
    return tokens, n_acc, n_emit, out_div
