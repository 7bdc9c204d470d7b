// Philox-4x32-10 and its fp32 conversions, bit for bit as specfair_kernels/rng.py.
//
//   key     = (seed & 0xffffffff, (seed >> 32) & 0xffffffff)
//   counter = (index i, draft position j, step & 0xffffffff, stream)
//
// i is 0 for the accept uniform, the group index for the group exponentials of the
// two-level race, the vocabulary index for the entries of the group that won.
//
// Only word 0 of the output block is used.  All arithmetic is uint32 with uint64
// products, so every compiler and vector width gives the same words.
//
// The fp32 conversions follow rng.uniform_accept / rng.exponential operation by
// operation.  The only multiply-add whose contraction into an FMA would change a
// result is in the series of `exponential`; it is fenced with `no_contract` so the
// file gives the same numbers whatever -ffp-contract / -march the build uses.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace specfair {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;

constexpr uint32_t kStreamAccept = 0;
constexpr uint32_t kStreamRace = 1;
constexpr uint32_t kStreamGroup = 2;
constexpr int64_t kRaceGroup = 32;  // vocabulary entries per group (rng.RACE_GROUP)

constexpr float kTwoM24 = 0x1p-24f;
constexpr float kTwoM32 = 0x1p-32f;
constexpr float kTwoM33 = 0x1p-33f;
constexpr float kSeriesCutoff = 0x1p-10f;
constexpr float kOneMinusUlp = 0.99999994f;  // largest fp32 below 1 (1 - 2^-24)

// One Philox round on the counter (c0, c1, c2, c3) with key (k0, k1).
static inline void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0,
                                uint32_t k1) {
  const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
  const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
  const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
  const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
  c1 = static_cast<uint32_t>(p1);
  c3 = static_cast<uint32_t>(p0);
  c0 = n0;
  c2 = n2;
}

// Word 0 of Philox-4x32-10(key = (k0, k1), counter = (c0, c1, c2, c3)).  Straight-line
// code (no loop) so that a loop over counters vectorises.
static inline uint32_t philox_w0(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t c1, uint32_t c2,
                                 uint32_t c3) {
  static_assert(kPhiloxRounds == 10, "unrolled for 10 rounds");
#define SPECFAIR_PHILOX_ROUND(r) \
  philox_round(c0, c1, c2, c3, k0 + (r) * kPhiloxW0, k1 + (r) * kPhiloxW1)
  SPECFAIR_PHILOX_ROUND(0u);
  SPECFAIR_PHILOX_ROUND(1u);
  SPECFAIR_PHILOX_ROUND(2u);
  SPECFAIR_PHILOX_ROUND(3u);
  SPECFAIR_PHILOX_ROUND(4u);
  SPECFAIR_PHILOX_ROUND(5u);
  SPECFAIR_PHILOX_ROUND(6u);
  SPECFAIR_PHILOX_ROUND(7u);
  SPECFAIR_PHILOX_ROUND(8u);
  SPECFAIR_PHILOX_ROUND(9u);
#undef SPECFAIR_PHILOX_ROUND
  return c0;
}

static inline uint32_t seed_k0(int64_t seed) { return static_cast<uint32_t>(static_cast<uint64_t>(seed)); }
static inline uint32_t seed_k1(int64_t seed) { return static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32); }
static inline uint32_t low32(int64_t x) { return static_cast<uint32_t>(static_cast<uint64_t>(x)); }

// Keeps the compiler from fusing the producer of x into a later add (FMA contraction).
static inline float no_contract(float x) {
#if defined(__GNUC__) || defined(__clang__)
  __asm__ volatile("" : "+m"(x));
#else
  volatile float y = x;
  x = y;
#endif
  return x;
}

// rng.uniform_accept: float((x >> 8) + 1) * 2^-24, in (0, 1].
static inline float uniform_accept(uint32_t x) {
  return static_cast<float>((x >> 8) + 1u) * kTwoM24;
}

// rng.exponential, first half: v = float(x) * 2^-32 + 2^-33, clamped to 1 - 2^-24.
// (float(x) * 2^-32 is exact, so an FMA here would give the same v.)
// float(x) is formed from two exact halves and one rounding, which is the correctly
// rounded conversion (as torch's int64 -> fp32) but vectorises without unsigned converts.
static inline float u32_to_f32(uint32_t x) {
  const float hi = static_cast<float>(static_cast<int32_t>(x >> 16)) * 65536.0f;  // exact
  const float lo = static_cast<float>(static_cast<int32_t>(x & 0xffffu));         // exact
  return hi + lo;
}

// v >= 0, so min(v, 1 - 2^-24) is taken on the bit patterns (an integer select
// vectorises where a float compare may not, under -ftrapping-math).
static inline float race_v(uint32_t x) {
  const float v = u32_to_f32(x) * kTwoM32 + kTwoM33;
  uint32_t b;
  std::memcpy(&b, &v, sizeof(b));
  constexpr uint32_t kOneMinusUlpBits = 0x3F7FFFFFu;  // 0.99999994f
  b = b < kOneMinusUlpBits ? b : kOneMinusUlpBits;
  float out;
  std::memcpy(&out, &b, sizeof(out));
  return out;
}

// rng.exponential, second half, from v = race_v(x): never 0, never inf.
static inline float exponential_from_v(float v) {
  if (v < kSeriesCutoff) {
    // v * (1.0 + v * (0.5 + v * (0.33333334 + v * 0.25))), one rounding per operation.
    float t = v * 0.25f;  // exact
    t = 0.33333334f + t;
    t = no_contract(v * t);
    t = 0.5f + t;
    t = no_contract(v * t);
    t = 1.0f + t;
    return v * t;
  }
  return -std::log(1.0f - v);
}

static inline float exponential(uint32_t x) { return exponential_from_v(race_v(x)); }

}  // namespace specfair
