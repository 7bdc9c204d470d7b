"""Philox-4x32-10 and its fp32 conversions as Triton functions, bit-identical to `specfair_kernels.rng`."""
import triton
import triton.language as tl

PHILOX_M0 = tl.constexpr(0xD2511F53)
PHILOX_M1 = tl.constexpr(0xCD9E8D57)
PHILOX_W0 = tl.constexpr(0x9E3779B9)
PHILOX_W1 = tl.constexpr(0xBB67AE85)
STREAM_ACCEPT = tl.constexpr(0)
STREAM_RACE = tl.constexpr(1)
STREAM_GROUP = tl.constexpr(2)
RACE_GROUP = tl.constexpr(32)  # vocabulary entries per group of the two-level race (rng.RACE_GROUP)


@triton.jit
def philox_word0(seed, c0, c1, c2, c3):
    """seed: int64 scalar; c0..c3: integer scalars or blocks (low 32 bits used) -> uint32."""
    k0 = tl.cast(seed, tl.uint32)
    k1 = tl.cast(seed >> 32, tl.uint32)
    c0 = tl.cast(c0, tl.uint32)
    c1 = tl.cast(c1, tl.uint32)
    c2 = tl.cast(c2, tl.uint32)
    c3 = tl.cast(c3, tl.uint32)
    m0 = tl.full(c0.shape, PHILOX_M0, tl.uint32)
    m1 = tl.full(c2.shape, PHILOX_M1, tl.uint32)
    for r in tl.static_range(10):
        if r > 0:
            k0 = k0 + PHILOX_W0
            k1 = k1 + PHILOX_W1
        hi0 = tl.umulhi(m0, c0)
        lo0 = m0 * c0
        hi1 = tl.umulhi(m1, c2)
        lo1 = m1 * c2
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0


@triton.jit
def uniform_accept(x):
    """uint32 -> fp32 uniform in (0, 1]."""
    return ((x >> 8) + 1).to(tl.float32) * 5.9604644775390625e-08


@triton.jit
def exponential(x):
    """uint32 -> fp32 Exp(1), never 0 or inf (series near 0, where the race is decided)."""
    v = x.to(tl.float32) * 2.3283064365386963e-10 + 1.1641532182693481e-10
    v = tl.minimum(v, 0.99999994)
    series = v * (1.0 + v * (0.5 + v * (0.33333334 + v * 0.25)))
    return tl.where(v < 0.0009765625, series, -tl.log(1.0 - v))
