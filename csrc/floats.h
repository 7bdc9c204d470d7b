// Branch-free scalar float helpers that GCC auto-vectorises at any x86-64 ISA level:
// conversions between fp32 and bf16 / fp16 storage (equal to torch's .float() and
// .to(dtype), round to nearest even) and an exp for non-positive arguments.
//
// Selects are integer bit masks: under -ftrapping-math (GCC's default) a float select is
// not if-converted, so a loop holding one would not vectorise.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

// Always inlined, so that a caller compiled for a wider ISA (target attribute) gets them
// compiled for that ISA too.
#define SPECFAIR_INLINE __attribute__((always_inline)) inline

namespace specfair {
namespace floats {

SPECFAIR_INLINE float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}
SPECFAIR_INLINE uint32_t bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}
// All ones where `c` holds, else 0.
SPECFAIR_INLINE uint32_t mask(bool c) { return 0u - static_cast<uint32_t>(c); }
SPECFAIR_INLINE float keep_if(float x, uint32_t m) { return from_bits(bits(x) & m); }

// --- storage -> fp32 (exact) --------------------------------------------------------------
SPECFAIR_INLINE float load(float x) { return x; }
SPECFAIR_INLINE float load(c10::BFloat16 x) { return from_bits(static_cast<uint32_t>(x.x) << 16); }
SPECFAIR_INLINE float load(c10::Half x) {
  const uint32_t h = x.x;
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t em = (h & 0x7fffu) << 13;  // exponent and mantissa in fp32 position
  const uint32_t exp = em & 0x0f800000u;
  const uint32_t is_max = mask(exp == 0x0f800000u);  // inf / NaN
  const uint32_t is_sub = mask(exp == 0u);           // zero / subnormal
  const uint32_t normal = em + (112u << 23) + (is_max & (112u << 23));  // rebias 15 -> 127
  const uint32_t sub = bits(static_cast<float>(static_cast<int32_t>(h & 0x3ffu)) * 0x1p-24f);  // exact
  return from_bits((sub & is_sub) | (normal & ~is_sub) | sign);
}

// --- fp32 -> storage (round to nearest even) ------------------------------------------------
template <typename T>
SPECFAIR_INLINE T store(float f);

template <>
SPECFAIR_INLINE float store<float>(float f) {
  return f;
}

// As c10::BFloat16(float): NaN becomes 0x7fc0, everything else rounds to nearest even.
template <>
SPECFAIR_INLINE c10::BFloat16 store<c10::BFloat16>(float f) {
  const uint32_t x = bits(f);
  const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  const uint32_t is_nan = mask((x & 0x7fffffffu) > 0x7f800000u);
  return c10::BFloat16(static_cast<uint16_t>((0x7fc0u & is_nan) | (rounded & ~is_nan)), c10::BFloat16::from_bits());
}

// As c10::Half(float): NaN keeps its sign as 0x7e00, overflow rounds to inf.
template <>
SPECFAIR_INLINE c10::Half store<c10::Half>(float f) {
  const uint32_t x = bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t a = x & 0x7fffffffu;
  // |f| >= 2^-14 (a half normal): rebias the exponent and round 23 -> 10 mantissa bits;
  // a carry out of the mantissa correctly bumps the exponent, up to inf at 65520.
  const uint32_t normal = (a - (112u << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
  // |f| < 2^-14: adding 0.5 leaves the half subnormal quantum 2^-24 as fp32's last bit,
  // so the FPU's own rounding is the half rounding.
  const uint32_t sub = bits(from_bits(a) + 0.5f) - bits(0.5f);
  const uint32_t is_sub = mask(a < 0x38800000u);    // 2^-14
  const uint32_t is_big = mask(a >= 0x47800000u);   // 2^16: inf or NaN
  const uint32_t special = a > 0x7f800000u ? 0x7e00u : 0x7c00u;
  const uint32_t finite = (sub & is_sub) | (normal & ~is_sub);
  return c10::Half(static_cast<uint16_t>(sign | (special & is_big) | (finite & ~is_big)), c10::Half::from_bits());
}

// --- exp -------------------------------------------------------------------------------------
// exp(x) for x <= 0 (x = -inf gives 0), relative error about 2 fp32 ulps.  Results below
// e^-87 (near the smallest normal fp32) are flushed to 0, so no subnormal ever reaches the
// arithmetic that follows.  n = round(x / ln 2) by the 1.5 * 2^23 trick, r = x - n ln 2 in
// two parts (Cody-Waite; n * kLn2Hi is exact), exp(r) = 1 + r + r^2 P(r) with P a
// degree-5 fit of (e^r - 1 - r) / r^2 on |r| <= ln2 / 2, then the exponent n goes into the bits.
constexpr float kExpMin = -87.0f;
SPECFAIR_INLINE float exp_nonpos(float x) {
  constexpr float kLog2e = 1.44269502f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194442e-4f;
  const uint32_t live = mask(x >= kExpMin);
  const float xc = from_bits((bits(x) & live) | (bits(kExpMin) & ~live));
  const float n = (xc * kLog2e + kRound) - kRound;
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.98261885e-4f;
  p = p * r + 1.39460049e-3f;
  p = p * r + 8.33343063e-3f;
  p = p * r + 4.16662693e-2f;
  p = p * r + 1.66666657e-1f;
  p = p * r + 0.5f;
  const float y = (p * r) * r + r + 1.0f;
  const uint32_t scale = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;  // 2^n, n >= -126
  return keep_if(y * from_bits(scale), live);
}

// --- dtype dispatch ---------------------------------------------------------------------------
// f(T{}) for the logits' storage type T: float, c10::BFloat16 or c10::Half.
template <typename F>
void dispatch_float(c10::ScalarType st, const char* name, F&& f) {
  switch (st) {
    case c10::kFloat:
      f(float{});
      break;
    case c10::kBFloat16:
      f(c10::BFloat16{});
      break;
    case c10::kHalf:
      f(c10::Half{});
      break;
    default:
      TORCH_CHECK(false, name, " must be float32, bfloat16 or float16 for the C++ backend, got ", st);
  }
}

}  // namespace floats
}  // namespace specfair
