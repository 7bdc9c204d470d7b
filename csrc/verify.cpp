// C++ CPU backend of specfair_kernels.verify (see specfair_kernels/reference.py, the spec).
//
// One OpenMP task per row b.  Per row:
//   1. scan every *used* position (target j <= num_draft, draft j < num_draft) once:
//      a = logit / tau in fp32, NaN/+inf/all -inf check, max and first argmax;
//      an invalid row stops here.
//   2. accept loop.  Greedy rows compare with the argmax of step 1 (no exp at all);
//      sampling rows need log p(x_j) and log q(x_j), i.e. one exp pass per position
//      (sum exp(a - max) with the max of step 1).  Without divergences the positions
//      after the first rejection are never exponentiated.
//   2b. block mode (method="block", sampling rows; reference._block_chain): every used
//      position is exponentiated for its lse and log w_j; then tau is searched from the
//      back: the last position tests log u_{nd-1} <= log w_nd, position j >= 1 the residual
//      mass r_j = sum max(w_j p - q, 0) (fp32 chunk partials, double total, like lse) as
//      log u_{j-1} <= log(r_j / (r_j + 1 - w_j)); tau = the first hit from the back, so
//      r_j is summed only after the last hit (never when every draft is accepted).
//      r_j, like lse, may differ from torch's sum in the last bit, which moves tau
//      only when log u lies within an ulp of log h_j (probability ~1e-7 per test).
//   3. the token at j* = num_accepted: argmax (greedy), else the two-level exponential
//      race of reference.race: the weights w = max(0, w_j* p - q) (w_j* = 1 in token mode; or p) of the sampling row
//      in one vectorised pass, then one exponential per group of kRaceGroup entries and
//      one per entry of the winning group (V / 32 + 32 Philox words, not V).
//   4. divergences (need_div) at every used drafted position, from the exp pass's
//      buffers: p = exp(a - max) / S, log p = a - lse (likewise q), fp32 partial sums
//      per chunk accumulated in double.  One-hot drafts: alpha = p(x), H as usual, and
//      CE = KL = 0 if exp(log p(x)) >= 1 in fp32, else +inf (as the reference).
//
// Random words and their fp32 conversions are bit-identical to rng.py (philox.h).  The
// decisions use the reference's fp32 formulas (a = logit / tau by true division,
// log p(x) = a[x] - lse, log u + log q <= log p, race weights max(0, p - q) with
// p = exp(a - lse), scores W / F and w / E); what may differ from torch in the last bit
// is lse and the group sums (summation order) and log/exp (glibc vs torch's SLEEF),
// which flips a token only on an fp32 near-tie.  exp and log are std::exp / std::log (no fast-math).
//
// Inner loops are plain float arrays written to auto-vectorise at the baseline ISA
// (-O3, no -march): bf16/fp16 -> fp32 conversions are exact and branch-free, selects
// are integer masks (float selects are not if-converted under -ftrapping-math), and the
// reductions use `omp simd` over 256-entry chunks (fp32 partials, double totals).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "floats.h"
#include "philox.h"

namespace {

using namespace specfair;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kChunk = 256;

struct Scan {
  float max;
  int64_t argmax;  // first maximal index
  bool bad;        // NaN or +inf, or all -inf
};

// a = src / tau over V entries: invalid check, max and first argmax.
template <bool Unit, typename T>
Scan scan_row_impl(const T* __restrict src, int64_t V, float tau) {
  alignas(64) float buf[kChunk];
  float m = -kInf;
  int64_t arg = 0;
  int bad = 0;
  for (int64_t c0 = 0; c0 < V; c0 += kChunk) {
    const int64_t n = std::min(kChunk, V - c0);
    float cm = -kInf;
    int f = 0;
#pragma omp simd reduction(max : cm) reduction(| : f)
    for (int64_t k = 0; k < n; ++k) {
      const float a = Unit ? floats::load(src[c0 + k]) : floats::load(src[c0 + k]) / tau;
      buf[k] = a;
      f |= static_cast<int>(a != a) | static_cast<int>(a == kInf);
      cm = a > cm ? a : cm;
    }
    bad |= f;
    if (cm > m) {
      m = cm;
      for (int64_t k = 0; k < n; ++k) {
        if (buf[k] == cm) {
          arg = c0 + k;
          break;
        }
      }
    }
  }
  return {m, arg, bad != 0 || !(m > -kInf)};
}

template <typename T>
Scan scan_row(const T* src, int64_t V, float tau) {
  return tau == 1.0f ? scan_row_impl<true>(src, V, tau) : scan_row_impl<false>(src, V, tau);
}

// A = src / tau (exact division, as the reference; skipped when tau == 1).
template <typename T>
void scale_row(const T* __restrict src, int64_t V, float tau, float* __restrict A) {
  if (tau == 1.0f) {
#pragma omp simd
    for (int64_t k = 0; k < V; ++k) A[k] = floats::load(src[k]);
  } else {
#pragma omp simd
    for (int64_t k = 0; k < V; ++k) A[k] = floats::load(src[k]) / tau;
  }
}

// Sum of x[0..n) in double, from fp32 partial sums over short chunks (vectorised).
inline double sum_f32(const float* __restrict x, int64_t n) {
  double s = 0.0;
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t m = std::min(kChunk, n - c0);
    float cs = 0.0f;
#pragma omp simd reduction(+ : cs)
    for (int64_t k = 0; k < m; ++k) cs += x[c0 + k];
    s += cs;
  }
  return s;
}

// A = src / tau, E = exp(A - m), returns S = sum E (m = max A, finite).  The exp loop
// holds nothing but the libm calls, so no accumulator is spilled around them.
template <typename T>
double exp_pass(const T* __restrict src, int64_t V, float tau, float m, float* __restrict A,
                float* __restrict E) {
  scale_row(src, V, tau, A);
  for (int64_t k = 0; k < V; ++k) E[k] = std::exp(A[k] - m);
  return sum_f32(E, V);
}

// reference._log_softmax_parts for a valid position: log(sum) + max in fp32.
inline float lse_from(double s, float m) { return std::log(static_cast<float>(s)) + m; }

struct Div {
  float alpha, kl, ce, entropy;
};

// torch.where(p > 0, x, 0) as a bit mask: the products are computed unconditionally
// (0 * -inf = NaN is masked away), and integer selects vectorise where a float select
// may not (-ftrapping-math).
inline uint32_t mask_pos(float p) { return 0u - static_cast<uint32_t>(p > 0.0f); }
inline float keep_if(float x, uint32_t mask) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof(b));
  b &= mask;
  std::memcpy(&x, &b, sizeof(x));
  return x;
}

// reference.divergences at one position: p = EA / SA, log p = A - la, and
//   drafts:   q = ED / SB, log q = D - lb: alpha, KL, CE, H;
//   one-hot:  q = 1 at x, 0 elsewhere: alpha = sum min(p, q) = p(x) and H only
//             (CE and KL are set by the caller: 0 if exp(log p(x)) >= 1 in fp32, else +inf).
template <bool OneHot>
Div div_pass(const float* __restrict A, const float* __restrict EA, float SA, float la,
             const float* __restrict D, const float* __restrict ED, float SB, float lb, int64_t x,
             int64_t V) {
  double ent = 0.0, ce = 0.0, kl = 0.0, al = 0.0;
  const float inv_a = 1.0f / SA, inv_b = 1.0f / SB;  // p = EA / SA to within an ulp
  for (int64_t c0 = 0; c0 < V; c0 += kChunk) {
    const int64_t n = std::min(kChunk, V - c0);
    float e_ = 0.f, c_ = 0.f, k_ = 0.f, a_ = 0.f;
    if constexpr (OneHot) {
#pragma omp simd reduction(+ : e_)
      for (int64_t k = 0; k < n; ++k) {
        const float p = EA[c0 + k] * inv_a;
        const float lp = A[c0 + k] - la;
        e_ += keep_if(p * lp, mask_pos(p));
      }
      if (x >= c0 && x < c0 + n) a_ = EA[x] * inv_a;  // min(p, q) is p(x) at x, 0 elsewhere
    } else {
#pragma omp simd reduction(+ : e_, c_, k_, a_)
      for (int64_t k = 0; k < n; ++k) {
        const int64_t i = c0 + k;
        const float p = EA[i] * inv_a;
        const float lp = A[i] - la;
        const float q = ED[i] * inv_b;
        const float lq = D[i] - lb;
        const uint32_t pos = mask_pos(p);
        e_ += keep_if(p * lp, pos);
        c_ += keep_if(p * lq, pos);
        k_ += keep_if(p * (lp - lq), pos);
        a_ += std::min(p, q);
      }
    }
    ent += e_;
    ce += c_;
    kl += k_;
    al += a_;
  }
  return {static_cast<float>(al), static_cast<float>(kl), -static_cast<float>(ce), -static_cast<float>(ent)};
}

// Race weights of the sampling row: p = exp(a - la) into w; with Residual, w = max(0, scale p - q)
// (q = exp(d - lb), or one-hot at xq when drf is null).  Returns whether any weight is
// positive (the residual has mass).
template <bool Residual, typename TT, typename TD>
bool race_weights(const TT* __restrict tgt, const TD* __restrict drf, int64_t V, float tau, float la, float lb,
                  int64_t xq, float* __restrict w, float scale = 1.0f) {
  int any = 0;
  if (tau == 1.0f) {
#pragma omp simd
    for (int64_t i = 0; i < V; ++i) w[i] = floats::load(tgt[i]);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < V; ++i) w[i] = floats::load(tgt[i]) / tau;
  }
  for (int64_t i = 0; i < V; ++i) w[i] = std::exp(w[i] - la);
  if constexpr (Residual) {
    for (int64_t i = 0; i < V; ++i) {
      float q;
      if (drf != nullptr) {
        q = std::exp((tau == 1.0f ? floats::load(drf[i]) : floats::load(drf[i]) / tau) - lb);
      } else {
        q = i == xq ? 1.0f : 0.0f;
      }
      float r = scale * w[i] - q;  // scale = w_tau of block mode, 1 in token mode
      r = r > 0.0f ? r : 0.0f;
      w[i] = r;
      any |= static_cast<int>(r > 0.0f);
    }
  }
  return any != 0;
}

// Block mode's residual mass at one position: r = sum max(w p - q, 0) with the race
// weights' formulas (p = exp(a - la), q = exp(d - lb) or one-hot at xq), fp32 partial
// sums over chunks, double total (as sum_f32), rounded to fp32 like the reference's sum.
template <typename TT, typename TD>
float residual_mass(const TT* __restrict tgt, const TD* __restrict drf, int64_t V, float tau, float la, float lb,
                    int64_t xq, float w) {
  double rs = 0.0;
  for (int64_t c0 = 0; c0 < V; c0 += kChunk) {
    const int64_t n = std::min(kChunk, V - c0);
    float cs = 0.0f;
    for (int64_t k = 0; k < n; ++k) {
      const int64_t i = c0 + k;
      const float a = tau == 1.0f ? floats::load(tgt[i]) : floats::load(tgt[i]) / tau;
      float q = i == xq ? 1.0f : 0.0f;
      if (drf != nullptr) q = std::exp((tau == 1.0f ? floats::load(drf[i]) : floats::load(drf[i]) / tau) - lb);
      const float r = w * std::exp(a - la) - q;
      cs += r > 0.0f ? r : 0.0f;
    }
    rs += cs;
  }
  return static_cast<float>(rs);
}

// reference.race for one row: group sums (sequential fp32), group race W / F, then the
// entries of the winning group race w / E.  Strict > keeps the first maximal index.
int64_t race(const float* __restrict w, int64_t V, uint32_t k0, uint32_t k1, uint32_t c1, uint32_t c2) {
  float best = -1.0f;  // every score is >= 0, so group 0 is taken first
  int64_t group = 0;
  for (int64_t g = 0, c0 = 0; c0 < V; ++g, c0 += kRaceGroup) {
    const int64_t n = std::min(kRaceGroup, V - c0);
    float W = 0.0f;
    for (int64_t k = 0; k < n; ++k) W += w[c0 + k];
    const float s = W / exponential(philox_w0(k0, k1, low32(g), c1, c2, kStreamGroup));
    if (s > best) {
      best = s;
      group = g;
    }
  }
  const int64_t lo = group * kRaceGroup, hi = std::min(lo + kRaceGroup, V);
  best = -1.0f;
  int64_t tok = lo;
  for (int64_t i = lo; i < hi; ++i) {
    const float s = w[i] / exponential(philox_w0(k0, k1, low32(i), c1, c2, kStreamRace));
    if (s > best) {
      best = s;
      tok = i;
    }
  }
  return tok;
}

struct Workspace {
  std::vector<float> A, EA, D, ED, W;
  std::vector<Scan> sa, sd;
  std::vector<float> la, lb, lw;  // block mode: lse per drafted position, log w_j
  void reserve(int64_t V, int64_t K) {
    if (static_cast<int64_t>(A.size()) < V) {
      A.resize(V);
      EA.resize(V);
      D.resize(V);
      ED.resize(V);
      W.resize(V);
    }
    sa.resize(K + 1);
    sd.resize(K + 1);
    la.resize(K + 1);
    lb.resize(K + 1);
    lw.resize(K + 1);
  }
};

// Per-thread scratch, shared by every dtype instantiation (OpenMP threads persist).
Workspace& thread_workspace() {
  thread_local Workspace ws;
  return ws;
}

struct RowOut {
  int64_t* tokens;  // [K+1]
  int32_t* n_acc;
  int32_t* n_emit;
  float* div[4];  // alpha, kl, ce, entropy rows [K], or null
};

// One row of reference.verify.  drf is null for one-hot drafts.
template <typename TT, typename TD, bool OneHot>
void verify_row(const TT* tgt, const TD* drf, const int64_t* xtok, int64_t K, int64_t V, int64_t nd,
                float temp, int64_t seed, int64_t step, bool need_div, bool block, Workspace& ws,
                const RowOut& out) {
  nd = std::min<int64_t>(std::max<int64_t>(nd, 0), K);
  const bool greedy = temp == 0.0f;
  const float tau = greedy ? 1.0f : temp;
  const uint32_t k0 = seed_k0(seed), k1 = seed_k1(seed), c2 = low32(step);

  for (int64_t j = 0; j <= K; ++j) out.tokens[j] = -1;
  if (need_div)
    for (int t = 0; t < 4; ++t)
      for (int64_t j = 0; j < K; ++j) out.div[t][j] = 0.0f;

  // 1. validity, max, argmax on used positions only.
  bool bad = false;
  for (int64_t j = 0; j <= nd && !bad; ++j) {
    ws.sa[j] = scan_row(tgt + j * V, V, tau);
    bad = ws.sa[j].bad;
  }
  if constexpr (!OneHot) {
    for (int64_t j = 0; j < nd && !bad; ++j) {
      ws.sd[j] = scan_row(drf + j * V, V, tau);
      bad = ws.sd[j].bad;
    }
  }
  if (bad) {
    *out.n_acc = 0;
    *out.n_emit = 0;
    if (need_div)
      for (int t = 0; t < 4; ++t)
        for (int64_t j = 0; j < nd; ++j) out.div[t][j] = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  auto tok_at = [&](int64_t j) { return std::min<int64_t>(std::max<int64_t>(xtok[j], 0), V - 1); };

  // 2. accept loop (+ divergences).
  int64_t n_acc = 0;
  bool decided = false;
  if (greedy) {
    while (n_acc < nd && tok_at(n_acc) == ws.sa[n_acc].argmax) ++n_acc;
    decided = true;
  }
  float la_star = 0.0f, lb_star = 0.0f, scale = 1.0f;
  const bool block_row = block && !greedy;
  // Block mode (reference._block_chain): log w_j, and the last i <= nd whose coin hit.
  float lw = 0.0f;  // log w_j of the position being visited
  ws.lw[0] = 0.0f;
  if (block_row) decided = true;  // every used position is visited; tau is set below
  float* A = ws.A.data();
  float* EA = ws.EA.data();
  float* D = ws.D.data();
  float* ED = ws.ED.data();
  for (int64_t j = 0; j < nd; ++j) {
    const bool accept_step = !decided;  // then j == n_acc
    if (!accept_step && !need_div && !block_row) break;
    const double SA = exp_pass(tgt + j * V, V, tau, ws.sa[j].max, A, EA);
    const float la = lse_from(SA, ws.sa[j].max);
    double SB = 1.0;
    float lb = 0.0f;
    if constexpr (!OneHot) {
      SB = exp_pass(drf + j * V, V, tau, ws.sd[j].max, D, ED);
      lb = lse_from(SB, ws.sd[j].max);
    }
    const int64_t x = tok_at(j);
    if (block_row) {
      ws.la[j] = la;
      ws.lb[j] = lb;
      const float logp_x = A[x] - la;
      const float logq_x = OneHot ? 0.0f : D[x] - lb;
      float inc = logq_x == -kInf ? kInf : logp_x - logq_x;
      if (logp_x == -kInf) inc = -kInf;
      lw = lw == -kInf ? -kInf : std::min(lw + inc, 0.0f);
      ws.lw[j + 1] = lw;
    }
    if (accept_step) {
      const float logp_x = A[x] - la;
      const float logq_x = OneHot ? 0.0f : D[x] - lb;
      const float u = uniform_accept(philox_w0(k0, k1, 0u, static_cast<uint32_t>(j), c2, kStreamAccept));
      const bool acc = logp_x > -kInf && std::log(u) + logq_x <= logp_x;
      if (acc) {
        ++n_acc;
      } else {
        decided = true;
        la_star = la;
        lb_star = lb;
      }
    }
    if (need_div) {
      Div dv = div_pass<OneHot>(A, EA, static_cast<float>(SA), la, D, ED, static_cast<float>(SB), lb, x, V);
      if constexpr (OneHot) dv.ce = dv.kl = std::exp(A[x] - la) >= 1.0f ? 0.0f : kInf;
      out.div[0][j] = dv.alpha;
      out.div[1][j] = dv.kl;
      out.div[2][j] = dv.ce;
      out.div[3][j] = dv.entropy;
    }
  }

  // 2b. block mode: tau = the last i whose coin hits, searched from the back so that r_i
  //     is summed only at the positions after the last hit (none when all are accepted),
  //     and only where the coin is at most w_i (h_i = min(r_i / (r_i + 1 - w_i), w_i)).
  if (block_row) {
    auto hit = [&](int64_t i) {  // log u_{i-1} <= log h_i
      const float u = uniform_accept(philox_w0(k0, k1, 0u, static_cast<uint32_t>(i - 1), c2, kStreamAccept));
      const float lu = std::log(u);
      if (i == nd || lu > ws.lw[i]) return lu <= ws.lw[i];  // h_i <= w_i: a coin above w_i misses
      const float r = residual_mass(tgt + i * V, OneHot ? nullptr : drf + i * V, V, tau, ws.la[i], ws.lb[i],
                                    tok_at(i), std::exp(ws.lw[i]));
      const float h = r > 0.0f ? r / (r + -std::expm1(ws.lw[i])) : 0.0f;
      return lu <= std::min(std::log(h), ws.lw[i]);
    };
    n_acc = 0;
    for (int64_t i = nd; i >= 1; --i) {
      if (hit(i)) {
        n_acc = i;
        break;
      }
    }
  }

  // 3. the token at j* = n_acc.
  int64_t tok;
  if (greedy) {
    tok = ws.sa[n_acc].argmax;
  } else {
    const TT* ts = tgt + n_acc * V;
    float* w = ws.W.data();
    bool residual = false;
    if (block_row && n_acc < nd) {  // the residual normalise(max(0, w_tau p - q)) at tau
      la_star = ws.la[n_acc];
      lb_star = ws.lb[n_acc];
      scale = std::exp(ws.lw[n_acc]);
    }
    if (n_acc < nd) {
      residual = race_weights<true, TT, TD>(ts, OneHot ? nullptr : drf + n_acc * V, V, tau, la_star, lb_star,
                                            tok_at(n_acc), w, scale);
    } else {  // all drafts accepted: the bonus row's lse was not needed so far
      la_star = lse_from(exp_pass(ts, V, tau, ws.sa[n_acc].max, A, EA), ws.sa[n_acc].max);
    }
    if (!residual) race_weights<false, TT, TD>(ts, nullptr, V, tau, la_star, 0.0f, 0, w);
    tok = race(w, V, k0, k1, static_cast<uint32_t>(n_acc), c2);
  }
  for (int64_t j = 0; j < n_acc; ++j) out.tokens[j] = tok_at(j);
  out.tokens[n_acc] = tok;
  *out.n_acc = static_cast<int32_t>(n_acc);
  *out.n_emit = static_cast<int32_t>(n_acc + 1);
}


py::tuple verify(const at::Tensor& target_in, const py::object& draft_obj, const at::Tensor& draft_tokens_in,
                 const at::Tensor& num_draft_in, const at::Tensor& temperature_in, const at::Tensor& seed_in,
                 const at::Tensor& step_in, bool need_div, bool block) {
  TORCH_CHECK(target_in.device().is_cpu(), "the C++ backend runs on the CPU only");
  TORCH_CHECK(target_in.dim() == 3, "target_logits must be [B, K+1, V]");
  const at::Tensor target = target_in.contiguous();
  const int64_t B = target.size(0), K1 = target.size(1), V = target.size(2);
  TORCH_CHECK(K1 >= 1, "target_logits needs K+1 >= 1 positions");
  const int64_t K = K1 - 1;
  std::optional<at::Tensor> draft;
  if (!draft_obj.is_none()) {
    draft = draft_obj.cast<at::Tensor>().contiguous();
    TORCH_CHECK(draft->device().is_cpu(), "draft_logits must be on the CPU");
    TORCH_CHECK(draft->dim() == 3 && draft->size(0) == B && draft->size(1) == K && draft->size(2) == V,
                "draft_logits must be [B, K, V]");
  }
  const at::Tensor xtok = draft_tokens_in.to(at::kLong).contiguous();
  const at::Tensor nd = num_draft_in.to(at::kLong).contiguous();
  const at::Tensor temp = temperature_in.to(at::kFloat).contiguous();
  const at::Tensor seed = seed_in.to(at::kLong).contiguous();
  const at::Tensor step = step_in.to(at::kLong).contiguous();
  TORCH_CHECK(xtok.dim() == 2 && xtok.size(0) == B && xtok.size(1) == K, "draft_tokens must be [B, K]");
  TORCH_CHECK(nd.numel() == B && temp.numel() == B && seed.numel() == B && step.numel() == B,
              "num_draft, temperature, seed and step must have B entries");

  at::Tensor tokens = at::empty({B, K1}, at::kLong);
  at::Tensor n_acc = at::empty({B}, at::kInt);
  at::Tensor n_emit = at::empty({B}, at::kInt);
  std::vector<at::Tensor> div;
  if (need_div)
    for (int t = 0; t < 4; ++t) div.push_back(at::empty({B, K}, at::kFloat));

  const int64_t* xp = xtok.data_ptr<int64_t>();
  const int64_t* ndp = nd.data_ptr<int64_t>();
  const float* tp = temp.data_ptr<float>();
  const int64_t* sp = seed.data_ptr<int64_t>();
  const int64_t* stp = step.data_ptr<int64_t>();
  int64_t* tokp = tokens.data_ptr<int64_t>();
  int32_t* nap = n_acc.data_ptr<int32_t>();
  int32_t* nep = n_emit.data_ptr<int32_t>();
  float* dp[4] = {nullptr, nullptr, nullptr, nullptr};
  if (need_div)
    for (int t = 0; t < 4; ++t) dp[t] = div[t].data_ptr<float>();

  auto run = [&](auto tt, auto td, auto one_hot) {
    using TT = decltype(tt);
    using TD = decltype(td);
    constexpr bool OneHot = decltype(one_hot)::value;
    const TT* tgt = target.data_ptr<TT>();
    const TD* drf = nullptr;
    if constexpr (!OneHot) drf = draft->data_ptr<TD>();
    const int nthreads = std::max(1, std::min<int>(at::get_num_threads(), static_cast<int>(B)));
    int failed = 0;  // no exception may leave an OpenMP region
    {
      py::gil_scoped_release no_gil;
#pragma omp parallel for schedule(dynamic) num_threads(nthreads)
      for (int64_t b = 0; b < B; ++b) {
        try {
          Workspace& ws = thread_workspace();
          ws.reserve(V, K);
          RowOut out{tokp + b * K1, nap + b, nep + b, {nullptr, nullptr, nullptr, nullptr}};
          if (need_div)
            for (int t = 0; t < 4; ++t) out.div[t] = dp[t] + b * K;
          verify_row<TT, TD, OneHot>(tgt + b * K1 * V, OneHot ? nullptr : drf + b * K * V, xp + b * K, K, V,
                                     ndp[b], tp[b], sp[b], stp[b], need_div, block, ws, out);
        } catch (...) {
#pragma omp atomic write
          failed = 1;
        }
      }
    }
    TORCH_CHECK(!failed, "specfair_kernels._C.verify: out of memory for the per-thread workspace");
  };
  floats::dispatch_float(target.scalar_type(), "target_logits", [&](auto tt) {
    if (draft) {
      floats::dispatch_float(draft->scalar_type(), "draft_logits",
                     [&](auto td) { run(tt, td, std::false_type{}); });
    } else {
      run(tt, float{}, std::true_type{});
    }
  });

  py::object div_obj = py::none();
  if (need_div) div_obj = py::make_tuple(div[0], div[1], div[2], div[3]);
  return py::make_tuple(tokens, n_acc, n_emit, div_obj);
}

// --- small RNG helpers, for tests against rng.py ----------------------------------------

int64_t philox_py(int64_t seed, int64_t c0, int64_t c1, int64_t c2, int64_t c3) {
  return philox_w0(seed_k0(seed), seed_k1(seed), low32(c0), low32(c1), low32(c2), low32(c3));
}

template <typename F>
at::Tensor map_words(const at::Tensor& words, F f) {
  const at::Tensor w = words.to(at::kLong).contiguous();
  at::Tensor out = at::empty(w.sizes(), at::kFloat);
  const int64_t* wp = w.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  for (int64_t i = 0; i < w.numel(); ++i) op[i] = f(low32(wp[i]));
  return out;
}

at::Tensor to_float32(const at::Tensor& x_in) {
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty(x.sizes(), at::kFloat);
  float* op = out.data_ptr<float>();
  floats::dispatch_float(x.scalar_type(), "x", [&](auto t) {
    using T = decltype(t);
    const T* xp = x.data_ptr<T>();
    for (int64_t i = 0; i < x.numel(); ++i) op[i] = floats::load(xp[i]);
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "specfair_kernels C++ CPU backend (OpenMP)";
  m.def("verify", &verify, py::arg("target_logits"), py::arg("draft_logits"), py::arg("draft_tokens"),
        py::arg("num_draft"), py::arg("temperature"), py::arg("seed"), py::arg("step"), py::arg("need_divergence"),
        py::arg("block") = false,
        "reference.verify on the CPU (method='block' when block): (tokens, num_accepted, num_emitted, (alpha, kl, ce, entropy) | None)");
  m.def("philox", &philox_py, py::arg("seed"), py::arg("c0"), py::arg("c1"), py::arg("c2"), py::arg("c3"),
        "Word 0 of Philox-4x32-10, as rng.philox (int in [0, 2**32))");
  m.def("uniform_accept", [](const at::Tensor& w) { return map_words(w, uniform_accept); },
        "rng.uniform_accept of uint32 words (int64 tensor) -> fp32");
  m.def("exponential", [](const at::Tensor& w) { return map_words(w, exponential); },
        "rng.exponential of uint32 words (int64 tensor) -> fp32");
  m.def("to_float32", &to_float32, "the backend's fp32/bf16/fp16 -> fp32 conversion (tests: equals .float())");
}
