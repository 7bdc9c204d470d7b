"""The counter-based random numbers every backend draws, specified in torch.

Every backend (Triton, C++, torch) must produce bit-identical random words for the
same key and counter, so that the same request gives the same tokens everywhere.
The generator is Philox-4x32-10 (Salmon et al., SC'11), keyed by the request's
64-bit seed and addressed by a counter built from what the number is *for*:

    key     = (seed & 0xffffffff, (seed >> 32) & 0xffffffff)
    counter = (index i, draft position j, verification step, stream)

`stream` separates the uses:

* ``STREAM_ACCEPT``: one uniform per drafted position j, counter i = 0.
* ``STREAM_GROUP``: one exponential per group of ``RACE_GROUP`` consecutive vocabulary
  entries at the position where a token is sampled, counter i = group index.
* ``STREAM_RACE``: one exponential per vocabulary entry of the group that won, counter
  i = vocabulary index.

A token is sampled by a two-level exponential race (`reference.race`): the groups race
with their summed weights, then the entries of the winning group race with their own.
Both levels are exact exponential races, so the token is an exact sample, and only
``V / RACE_GROUP + RACE_GROUP`` numbers are drawn per sampled token instead of V.
Because nothing in the key or counter depends on the batch slot or batch size, a seeded
request is batch-invariant.

Only word 0 of each Philox output block is used: a kernel evaluates one counter per
group or entry, and throwing three words away keeps the indexing trivial.

Conversions (fp32, identical in every backend):

* accept uniform ``u = float((x >> 8) + 1) * 2**-24``, in (0, 1]: never 0, so
  ``log u`` is finite, and ``u <= p/q`` has probability ``min(1, p/q)``.
* race exponential ``E = -log1p(-v)`` with ``v = float(x) * 2**-32 + 2**-33``
  clamped below 1.  For ``v < 2**-10`` a 4-term series replaces log1p (Triton has
  no log1p), keeping a 2**-33 resolution near E = 0, where the race is decided;
  E is never 0, so no token wins regardless of its probability.
"""
from __future__ import annotations

import torch

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10

STREAM_ACCEPT = 0
STREAM_RACE = 1
STREAM_GROUP = 2
RACE_GROUP = 32  # vocabulary entries per group of the two-level race

MASK32 = 0xFFFFFFFF
TWO_M24 = 2.0**-24
TWO_M32 = 2.0**-32
TWO_M33 = 2.0**-33
SERIES_CUTOFF = 2.0**-10
ONE_MINUS_ULP = 0.99999994  # largest fp32 below 1


def philox(seed: torch.Tensor, c0, c1, c2, c3) -> torch.Tensor:
    """Word 0 of Philox-4x32-10 for broadcastable int64 tensors; returns int64 in [0, 2**32).

    uint32 lanes live in int64: a 32x32-bit product wraps in int64, but its low 64 bits
    are exact, and so are both 32-bit halves taken from them.
    """
    seed = torch.as_tensor(seed, dtype=torch.int64)
    dev = seed.device
    k0 = seed & MASK32  # keys keep their own (small) shape
    k1 = (seed >> 32) & MASK32
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64, device=dev) & MASK32 for c in (c0, c1, c2, c3))
    shape = torch.broadcast_shapes(c0.shape, c1.shape, c2.shape, c3.shape, k0.shape)
    c0, c1, c2, c3 = (c.expand(shape) for c in (c0, c1, c2, c3))
    for r in range(PHILOX_ROUNDS):
        if r:
            k0 = (k0 + PHILOX_W0) & MASK32
            k1 = (k1 + PHILOX_W1) & MASK32
        p0 = c0 * PHILOX_M0
        p1 = c2 * PHILOX_M1
        n0 = (p1 >> 32).bitwise_and_(MASK32).bitwise_xor_(c1).bitwise_xor_(k0)
        n2 = (p0 >> 32).bitwise_and_(MASK32).bitwise_xor_(c3).bitwise_xor_(k1)
        c0, c1, c2, c3 = n0, p1.bitwise_and_(MASK32), n2, p0.bitwise_and_(MASK32)
    return c0


def philox4(seed: int, counter: tuple[int, int, int, int]) -> tuple[int, ...]:
    """All four words, in plain Python: the known-answer tests check `philox` against it."""
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    c = list(counter)
    for r in range(PHILOX_ROUNDS):
        if r:
            k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
        p0, p1 = PHILOX_M0 * c[0], PHILOX_M1 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k0) & MASK32, p1 & MASK32, ((p0 >> 32) ^ c[3] ^ k1) & MASK32, p0 & MASK32]
    return tuple(c)


def uniform_accept(x: torch.Tensor) -> torch.Tensor:
    """uint32 word (int64) -> fp32 uniform in (0, 1]."""
    return ((x >> 8) + 1).to(torch.float32) * TWO_M24


def exponential(x: torch.Tensor) -> torch.Tensor:
    """uint32 word (int64) -> fp32 Exp(1) sample, never 0 and never inf."""
    v = x.to(torch.float32) * TWO_M32 + TWO_M33
    v = torch.clamp(v, max=ONE_MINUS_ULP)
    series = v * (1.0 + v * (0.5 + v * (0.33333334 + v * 0.25)))
    return torch.where(v < SERIES_CUTOFF, series, -torch.log(1.0 - v))
