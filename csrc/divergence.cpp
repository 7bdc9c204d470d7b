// C++ CPU backend of specfair_kernels.token_divergence: per-row value and local gradient
// d value / d draft, fused, for rows of draft (d) and target (t) logits [N, V].  The math
// and the special values are those of the torch path (specfair_kernels/reference.py,
// `token_divergence_rows`; the rules are in specfair_kernels/divergence.py's docstring).
//
// One OpenMP thread per row at a time.  Per row, with x = (d - max d) / T, y = (t - max t) / T:
//   1. scan: max d, max t, NaN / +inf check (a bad row stops here: NaN value, NaN gradient);
//   2. exp:  Eq = exp(x), Ep = exp(y), Sq = sum Eq, Sp = sum Ep, and for CE / KL
//              C = sum_{y>-inf, x>-inf} Ep x,   K = sum_{y>-inf, x>-inf} Ep (y - x),
//            so that CE = log Sq - C / Sp and KL = K / Sp - log Sp + log Sq (+inf where some
//            y > -inf meets x = -inf).  Eq and Ep go to a per-thread buffer of 2 V floats
//            when a later pass needs them;
//   3. alpha / tv: p = Ep / Sp, q = Eq / Sq: sum min(p, q), sum |p - q| and
//            S = sum_{q<p} q (for the gradient);
//   4. gradient: (q - p) / T for CE / KL, ([q < p] q - q S) / T for alpha (tv: negated),
//            written once, in the draft's dtype.
// Only pass 1 reads the logits from memory; pass 2 finds them in L2 (a row of 32000 fp32
// logits is 125 KiB), and the gradient is written once.  Nothing [N, V] is allocated
// besides the gradient itself; bf16 / fp16 are read and written directly.
//
// Numerics: fp32 arithmetic, with fp32 partial sums over 256-entry chunks added in double.
// exp is floats::exp_nonpos (about 2 ulps); identical rows give bit-identical p and q,
// hence an exactly zero alpha / tv gradient.  Rows are independent, so the thread count
// never changes a result.
//
// The row kernel is compiled for the baseline x86-64 ISA, AVX2 and AVX-512 (see `row_kernel`).
//
// Registered with the dispatcher (TORCH_LIBRARY_FRAGMENT: verify.cpp owns the pybind11 module
// of the same _C library): torch.ops.specfair_kernels.token_divergence, scale_rows_ (the
// backward's in-place row scaling) and, for the tests and `python -m specfair_kernels.env`,
// cast_from_float32, exp_nonpositive and cpu_isa.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "floats.h"

namespace {

using namespace specfair::floats;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kChunk = 256;

enum Kind : int { kCE = 0, kKL = 1, kTV = 2, kAlpha = 3 };

int kind_code(c10::string_view kind) {
  if (kind == "ce") return kCE;
  if (kind == "kl") return kKL;
  if (kind == "tv") return kTV;
  if (kind == "alpha") return kAlpha;
  TORCH_CHECK(false, "kind must be one of 'ce', 'kl', 'tv', 'alpha', got '", std::string(kind), "'");
}

struct Scan {
  float max_d, max_t;
  bool bad;  // NaN or +inf in either row
};

template <typename TD, typename TT>
SPECFAIR_INLINE Scan scan_row(const TD* __restrict d, const TT* __restrict t, int64_t V) {
  float md = -kInf, mt = -kInf;
  int bad = 0;
#pragma omp simd reduction(max : md, mt) reduction(| : bad)
  for (int64_t i = 0; i < V; ++i) {
    const float a = load(d[i]);
    const float b = load(t[i]);
    bad |= static_cast<int>(a != a) | static_cast<int>(a == kInf) | static_cast<int>(b != b) |
           static_cast<int>(b == kInf);
    md = a > md ? a : md;
    mt = b > mt ? b : mt;
  }
  return {md, mt, bad != 0};
}

struct Sums {
  double sq = 0.0, sp = 0.0, c = 0.0, k = 0.0;
  bool infinite = false;  // some y > -inf meets x = -inf (p > 0, q = 0)
};

// Pass 2.  Store: keep Eq / Ep for passes 3-4.
template <int K, bool Store, typename TD, typename TT>
SPECFAIR_INLINE Sums exp_pass(const TD* __restrict d, const TT* __restrict t, int64_t V, float md, float mt, float inv_t,
              float* __restrict Eq, float* __restrict Ep) {
  Sums s;
  int infinite = 0;
  for (int64_t c0 = 0; c0 < V; c0 += kChunk) {
    const int64_t n = std::min(kChunk, V - c0);
    float sq = 0.f, sp = 0.f, c = 0.f, k = 0.f;
#pragma omp simd reduction(+ : sq, sp, c, k) reduction(| : infinite)
    for (int64_t j = 0; j < n; ++j) {
      const int64_t i = c0 + j;
      const float x = (load(d[i]) - md) * inv_t;
      const float y = (load(t[i]) - mt) * inv_t;
      const float eq = exp_nonpos(x);
      const float ep = exp_nonpos(y);
      if constexpr (Store) {
        Eq[i] = eq;
        Ep[i] = ep;
      }
      sq += eq;
      sp += ep;
      if constexpr (K == kCE || K == kKL) {
        const bool fin_p = y > -kInf, fin_q = x > -kInf;
        infinite |= static_cast<int>(fin_p & !fin_q);
        const uint32_t both = mask(fin_p & fin_q);  // 0 * -inf products are masked away
        if constexpr (K == kCE) {
          c += keep_if(ep * x, both);
        } else {
          k += keep_if(ep * (y - x), both);
        }
      }
    }
    s.sq += sq;
    s.sp += sp;
    s.c += c;
    s.k += k;
  }
  s.infinite = infinite != 0;
  return s;
}

struct Overlap {
  double min_sum = 0.0, abs_sum = 0.0, s_lt = 0.0;
};

// Pass 3 (alpha / tv): sum min(p, q) or sum |p - q|, and S = sum_{q<p} q if Grad.
template <int K, bool Grad>
SPECFAIR_INLINE Overlap overlap_pass(const float* __restrict Eq, const float* __restrict Ep, int64_t V, float iq, float ip) {
  Overlap o;
  for (int64_t c0 = 0; c0 < V; c0 += kChunk) {
    const int64_t n = std::min(kChunk, V - c0);
    float mn = 0.f, ab = 0.f, lt = 0.f;
#pragma omp simd reduction(+ : mn, ab, lt)
    for (int64_t j = 0; j < n; ++j) {
      const float q = Eq[c0 + j] * iq;
      const float p = Ep[c0 + j] * ip;
      if constexpr (K == kAlpha) {
        mn += p < q ? p : q;
      } else {
        ab += std::fabs(p - q);
      }
      if constexpr (Grad) lt += keep_if(q, mask(q < p));
    }
    o.min_sum += mn;
    o.abs_sum += ab;
    o.s_lt += lt;
  }
  return o;
}

// Pass 4.
template <int K, typename TD>
SPECFAIR_INLINE void grad_pass(const float* __restrict Eq, const float* __restrict Ep, int64_t V, float iq, float ip,
               float inv_t, float s_lt, TD* __restrict g) {
  if constexpr (K == kCE || K == kKL) {
#pragma omp simd
    for (int64_t i = 0; i < V; ++i) g[i] = store<TD>((Eq[i] * iq - Ep[i] * ip) * inv_t);
  } else {
    const float scale = K == kAlpha ? inv_t : -inv_t;
#pragma omp simd
    for (int64_t i = 0; i < V; ++i) {
      const float q = Eq[i] * iq;
      const float p = Ep[i] * ip;
      g[i] = store<TD>((keep_if(q, mask(q < p)) - q * s_lt) * scale);
    }
  }
}

std::vector<float>& thread_buffer(int64_t n) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return buf;
}

// One row: returns the value; writes the gradient row if g is not null.
template <int K, typename TD, typename TT>
SPECFAIR_INLINE float divergence_row(const TD* d, const TT* t, int64_t V, float inv_t, TD* g) {
  const Scan sc = scan_row(d, t, V);
  // A tempered maximum that overflows makes the torch path's d / T hold +inf: a bad row.
  if (sc.bad || !(sc.max_d > -kInf) || !(sc.max_t > -kInf) || !(sc.max_d * inv_t < kInf) ||
      !(sc.max_t * inv_t < kInf) || !(inv_t < kInf)) {
    if (g != nullptr) {
      const TD nan = store<TD>(std::numeric_limits<float>::quiet_NaN());
      std::fill(g, g + V, nan);
    }
    return std::numeric_limits<float>::quiet_NaN();
  }
  const bool keep = g != nullptr || K == kTV || K == kAlpha;
  float* Eq = nullptr;
  float* Ep = nullptr;
  Sums s;
  if (keep) {
    std::vector<float>& buf = thread_buffer(2 * V);
    Eq = buf.data();
    Ep = Eq + V;
    s = exp_pass<K, true>(d, t, V, sc.max_d, sc.max_t, inv_t, Eq, Ep);
  } else {
    s = exp_pass<K, false>(d, t, V, sc.max_d, sc.max_t, inv_t, Eq, Ep);
  }
  const float iq = static_cast<float>(1.0 / s.sq);
  const float ip = static_cast<float>(1.0 / s.sp);
  double value;
  float s_lt = 0.f;
  if constexpr (K == kCE || K == kKL) {
    const double log_sq = std::log(s.sq);
    value = K == kCE ? log_sq - s.c / s.sp : s.k / s.sp - std::log(s.sp) + log_sq;
    if (s.infinite) value = std::numeric_limits<double>::infinity();
  } else {
    const Overlap o = g != nullptr ? overlap_pass<K, true>(Eq, Ep, V, iq, ip) : overlap_pass<K, false>(Eq, Ep, V, iq, ip);
    value = K == kAlpha ? o.min_sum : 0.5 * o.abs_sum;
    s_lt = static_cast<float>(o.s_lt);
  }
  if (g != nullptr) grad_pass<K, TD>(Eq, Ep, V, iq, ip, inv_t, s_lt, g);
  return static_cast<float>(value);
}

// The row kernel compiled for three x86-64 levels; the widest the CPU runs is used (the
// baseline ISA has 4-wide vectors, AVX-512 16-wide: about 3x faster here).
// SPECFAIR_CPU_ISA=baseline|avx2 caps the choice (tests compare the variants).
enum Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };
const char* const kIsaNames[] = {"baseline", "avx2", "avx512"};

template <int K, typename TD, typename TT>
using RowFn = float (*)(const TD*, const TT*, int64_t, float, TD*);

template <int K, typename TD, typename TT>
float row_baseline(const TD* d, const TT* t, int64_t V, float inv_t, TD* g) {
  return divergence_row<K, TD, TT>(d, t, V, inv_t, g);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define SPECFAIR_X86_VARIANTS 1
template <int K, typename TD, typename TT>
__attribute__((target("avx2"))) float row_avx2(const TD* d, const TT* t, int64_t V, float inv_t, TD* g) {
  return divergence_row<K, TD, TT>(d, t, V, inv_t, g);
}
template <int K, typename TD, typename TT>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,prefer-vector-width=512"))) float row_avx512(
    const TD* d, const TT* t, int64_t V, float inv_t, TD* g) {
  return divergence_row<K, TD, TT>(d, t, V, inv_t, g);
}
#endif

Isa best_isa() {
  static const Isa best = [] {
#ifdef SPECFAIR_X86_VARIANTS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      return kAvx512;
    if (__builtin_cpu_supports("avx2")) return kAvx2;
#endif
    return kBaseline;
  }();
  return best;
}

Isa active_isa() {
  const Isa best = best_isa();
  const char* cap = std::getenv("SPECFAIR_CPU_ISA");
  if (cap == nullptr || *cap == '\0') return best;
  for (int i = 0; i < 3; ++i)
    if (std::strcmp(cap, kIsaNames[i]) == 0) return std::min(best, static_cast<Isa>(i));
  TORCH_CHECK(false, "SPECFAIR_CPU_ISA must be baseline, avx2 or avx512, got '", cap, "'");
}

template <int K, typename TD, typename TT>
RowFn<K, TD, TT> row_kernel(Isa isa) {
#ifdef SPECFAIR_X86_VARIANTS
  if (isa == kAvx512) return &row_avx512<K, TD, TT>;
  if (isa == kAvx2) return &row_avx2<K, TD, TT>;
#endif
  return &row_baseline<K, TD, TT>;
}


template <typename F>
void dispatch_kind(int kind, F&& f) {
  switch (kind) {
    case kCE:
      f(std::integral_constant<int, kCE>{});
      break;
    case kKL:
      f(std::integral_constant<int, kKL>{});
      break;
    case kTV:
      f(std::integral_constant<int, kTV>{});
      break;
    default:
      f(std::integral_constant<int, kAlpha>{});
  }
}

// -> (values fp32 [N], gradient [N, V] in draft's dtype; a [0] tensor unless need_grad).
std::tuple<at::Tensor, at::Tensor> token_divergence(const at::Tensor& draft_in, const at::Tensor& target_in,
                                                    c10::string_view kind_name, double temperature,
                                                    bool need_grad) {
  TORCH_CHECK(draft_in.device().is_cpu() && target_in.device().is_cpu(), "the C++ backend runs on the CPU only");
  TORCH_CHECK(draft_in.dim() == 2 && draft_in.sizes() == target_in.sizes(),
              "draft and target must both be [N, V], got ", draft_in.sizes(), " and ", target_in.sizes());
  TORCH_CHECK(temperature > 0, "temperature must be > 0, got ", temperature);
  const int kind = kind_code(kind_name);
  const at::Tensor draft = draft_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const int64_t N = draft.size(0), V = draft.size(1);
  at::Tensor values = at::empty({N}, draft.options().dtype(at::kFloat));
  at::Tensor grad = need_grad ? at::empty({N, V}, draft.options()) : at::empty({0}, draft.options());
  const float inv_t = static_cast<float>(1.0 / temperature);
  float* vp = values.data_ptr<float>();
  const Isa isa = active_isa();

  dispatch_float(draft.scalar_type(), "draft", [&](auto td) {
    using TD = decltype(td);
    dispatch_float(target.scalar_type(), "target", [&](auto tt) {
      using TT = decltype(tt);
      const TD* dp = draft.data_ptr<TD>();
      const TT* tp = target.data_ptr<TT>();
      TD* gp = need_grad ? grad.data_ptr<TD>() : nullptr;
      dispatch_kind(kind, [&](auto k) {
        constexpr int K = decltype(k)::value;
        const RowFn<K, TD, TT> row = row_kernel<K, TD, TT>(isa);
        const int nthreads = std::max(1, std::min<int>(at::get_num_threads(), static_cast<int>(std::max<int64_t>(N, 1))));
        int failed = 0;  // no exception may leave an OpenMP region
#pragma omp parallel for schedule(dynamic) num_threads(nthreads)
        for (int64_t r = 0; r < N; ++r) {
          try {
            vp[r] = row(dp + r * V, tp + r * V, V, inv_t, gp ? gp + r * V : nullptr);
          } catch (...) {
#pragma omp atomic write
            failed = 1;
          }
        }
        TORCH_CHECK(!failed, "specfair_kernels token_divergence: out of memory for the per-thread row buffer");
      });
    });
  });
  return {values, grad};
}

// Backward: grad[r] *= scale[r] in place, and exactly 0 where scale[r] == 0 (a masked row's
// local gradient may be NaN).  One pass, as grad.mul_(scale[:, None]) then a masked fill.
void scale_rows_(at::Tensor& grad, const at::Tensor& scale_in) {
  TORCH_CHECK(grad.device().is_cpu() && grad.dim() == 2 && grad.is_contiguous(), "grad must be a contiguous CPU [N, V]");
  const at::Tensor scale = scale_in.to(at::kFloat).contiguous();
  TORCH_CHECK(scale.numel() == grad.size(0), "scale must have one entry per row of grad");
  const int64_t N = grad.size(0), V = grad.size(1);
  const float* sp = scale.data_ptr<float>();
  dispatch_float(grad.scalar_type(), "grad", [&](auto o) {
    using T = decltype(o);
    T* gp = grad.data_ptr<T>();
    const int nthreads = std::max(1, std::min<int>(at::get_num_threads(), static_cast<int>(std::max<int64_t>(N, 1))));
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < N; ++r) {
      T* row = gp + r * V;
      const float s = sp[r];
      if (s == 0.0f) {
        std::fill(row, row + V, store<T>(0.0f));
      } else if (s != 1.0f) {
#pragma omp simd
        for (int64_t i = 0; i < V; ++i) row[i] = store<T>(load(row[i]) * s);
      }
    }
  });
}

// The backend's fp32 -> bf16 / fp16 rounding (tests: equals x.to(dtype)).
at::Tensor cast_from_float32(const at::Tensor& x_in, at::ScalarType dtype) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, "x must be float32");
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(dtype));
  const float* xp = x.data_ptr<float>();
  const int64_t n = x.numel();
  dispatch_float(dtype, "dtype", [&](auto o) {
    using T = decltype(o);
    T* op = out.data_ptr<T>();
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) op[i] = store<T>(xp[i]);
  });
  return out;
}

// The backend's exp (tests: accuracy against float64).
at::Tensor exp_nonpositive(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, "x must be float32");
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t n = x.numel();
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) op[i] = exp_nonpos(xp[i]);
  return out;
}

std::string cpu_isa() { return kIsaNames[active_isa()]; }

}  // namespace

TORCH_LIBRARY_FRAGMENT(specfair_kernels, m) {
  m.def("token_divergence(Tensor draft, Tensor target, str kind, float temperature, bool need_grad) "
        "-> (Tensor, Tensor)");
  m.def("cast_from_float32(Tensor x, ScalarType dtype) -> Tensor");
  m.def("exp_nonpositive(Tensor x) -> Tensor");
  m.def("scale_rows_(Tensor(a!) grad, Tensor scale) -> ()");
  m.def("cpu_isa() -> str");
}

TORCH_LIBRARY_IMPL(specfair_kernels, CPU, m) {
  m.impl("token_divergence", &token_divergence);
  m.impl("cast_from_float32", &cast_from_float32);
  m.impl("exp_nonpositive", &exp_nonpositive);
  m.impl("scale_rows_", &scale_rows_);
}

TORCH_LIBRARY_IMPL(specfair_kernels, CatchAll, m) { m.impl("cpu_isa", &cpu_isa); }
