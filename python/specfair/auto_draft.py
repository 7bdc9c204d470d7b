"""What ``num_draft="auto"`` knows between steps and between calls: each task's acceptance
evidence, the generator's memory of earlier calls, and when a task decoding with the
verifier alone (K = 0) still drafts one token to keep its estimate current (a *probe*).

Probes.  A task at K = 0 drafts one token on the steps of `is_probe_step` (the 8th, 16th,
32nd, 64th step of a call, then every 64th), *unless* its evidence already rules out that
any K pays: the one-sided upper confidence bound of its acceptance (`acceptance_upper_bound`,
Wilson's score bound at ``PROBE_Z`` = 1.645, 95%) lies below the smallest break-even
acceptance over K = 1..K_max (`specfair.costs.min_break_even`; inf when even acceptance 1
cannot pay, and then no probe can help).  Such a task is probed only once every
``AUTO_PROBE_MAX`` steps (`is_refresh_step`), counted across the calls the generator
remembers (`AcceptanceHistory.steps`), so that a change in what it generates is still seen.
A call given its own ``stats`` counts from its first step: a call replayed from the same
``stats`` (as `specfair.baseline.measure_speedup` does) makes the same choices.
A probe costs about c + r_1 - 1 of a verifier step, plus the drafter's catch-up over the
tokens it has not read.

Memory (`AcceptanceHistory`).  A call made without a ``stats`` accumulator starts a new one,
so by itself it would start from the prior acceptance every time.  The generator keeps the
counts of its earlier such calls and adds them to the call's own when auto chooses K; a
caller that passes ``stats`` keeps its history there instead, and the memory is not read.
"""
from __future__ import annotations

import math

import torch

import specfair_kernels as sk

__all__ = ["AUTO_PROBE_FIRST", "AUTO_PROBE_MAX", "PROBE_Z", "AcceptanceHistory", "acceptance_upper_bound",
           "evidence_count", "is_probe_step", "is_refresh_step", "probe_policy", "probes_now"]

AUTO_PROBE_FIRST = 8     # auto at K = 0 drafts one token at step 8 of a call,
AUTO_PROBE_MAX = 64      # then at intervals that double up to this many steps (`is_probe_step`)
PROBE_Z = 1.645          # one-sided 95% normal quantile of the acceptance's upper bound


def is_probe_step(step: int) -> bool:
    """Whether auto drafts one token at ``step`` (0-based, within one `generate` call) for
    a task at K = 0 whose evidence does not yet rule speculation out: steps 7, 15, 31, 63
    (the 8th, 16th, 32nd, 64th), then every 64th.  The intervals double, so a task below
    the break-even acceptance pays for 3 probes in 32 steps and 7 in 256, while one that
    starts paying is seen within 8 steps of a short call."""
    s = step + 1
    return s >= AUTO_PROBE_FIRST and (s & (s - 1) == 0 or s % AUTO_PROBE_MAX == 0)


def is_refresh_step(step: int) -> bool:
    """Whether a task whose evidence rules speculation out is probed at ``step`` (0-based,
    counted from the first call the generator remembers): once every AUTO_PROBE_MAX."""
    return step % AUTO_PROBE_MAX == AUTO_PROBE_MAX - 1


def acceptance_upper_bound(rate, n, z: float = PROBE_Z) -> list[float]:
    """Per task, Wilson's score upper bound of an acceptance probability estimated as
    ``rate`` from ``n`` scored drafts (sequences of equal length; NaN rate or n = 0: 1.0,
    nothing is known).  For a mean of values in [0, 1] (the expected acceptance) it is
    conservative: a Bernoulli variable has the largest variance of any with that mean."""
    out = []
    for p, m in zip([float(x) for x in rate], [float(x) for x in n]):
        if m <= 0 or math.isnan(p):
            out.append(1.0)
            continue
        p = min(max(p, 0.0), 1.0)
        z2 = z * z
        centre = p + z2 / (2 * m)
        half = z * math.sqrt(p * (1 - p) / m + z2 / (4 * m * m))
        out.append(min(1.0, (centre + half) / (1 + z2 / m)))
    return out


def probe_policy(rate, n, break_even: float, z: float = PROBE_Z) -> list[str]:
    """Per task, when it probes while at K = 0, given its acceptance estimate ``rate`` from
    ``n`` scored drafts and ``break_even``, the smallest break-even acceptance of any K:
    ``"never"`` when that is inf (no acceptance pays, so no probe can change the choice),
    ``"refresh"`` (`is_refresh_step`) when `acceptance_upper_bound` lies below it, else
    ``"schedule"`` (`is_probe_step`; also when it is NaN)."""
    if math.isinf(break_even):
        return ["never"] * len(rate)
    if math.isnan(break_even):
        return ["schedule"] * len(rate)
    return ["refresh" if u < break_even else "schedule" for u in acceptance_upper_bound(rate, n, z)]


def probes_now(policy: list[str], step: int, before: int) -> list[bool]:
    """Per task, whether a task at K = 0 with this `probe_policy` drafts one token at
    ``step`` of the call, after ``before`` remembered steps of earlier calls."""
    due = {"schedule": is_probe_step(step), "refresh": is_refresh_step(before + step), "never": False}
    return [due[p] for p in policy]


class AcceptanceHistory:
    """The acceptance counts and sums of a generator's earlier calls (made without a
    ``stats`` accumulator), per task id; empty until `add`."""

    def __init__(self):
        self.stats: sk.TaskStats | None = None
        self.steps = 0   # decode steps of the calls held (the refresh probes count from here)

    def add(self, stats: sk.TaskStats, steps: int) -> None:
        """Add one finished call's accumulator and its number of decode steps (tasks beyond
        the ones seen so far extend the accumulator)."""
        self.steps += steps
        if self.stats is None or stats.num_tasks > self.stats.num_tasks or stats.device != self.stats.device:
            grown = sk.TaskStats(stats.num_tasks if self.stats is None else max(stats.num_tasks, self.stats.num_tasks),
                                 stats.max_draft, stats.device)
            if self.stats is not None:
                _add_rows(grown, self.stats)
            self.stats = grown
        _add_rows(self.stats, stats)

    def combined(self, stats: sk.TaskStats) -> sk.TaskStats:
        """``stats`` plus the remembered counts and sums of its tasks (a new accumulator; its
        accept-length histogram is ``stats``' alone)."""
        if self.stats is None:
            return stats
        out = stats.clone()
        _add_rows(out, self.stats, hist=False)
        return out

    def clear(self) -> None:
        self.stats = None
        self.steps = 0


def _add_rows(dst: sk.TaskStats, src: sk.TaskStats, hist: bool = True) -> None:
    """dst += src over the tasks both have (and the histogram columns both have)."""
    T = min(dst.num_tasks, src.num_tasks)
    dst.counts[:T] += src.counts[:T].to(dst.device)
    dst.sums[:T] += src.sums[:T].to(dst.device)
    if hist:
        k = min(dst.hist.shape[1], src.hist.shape[1])
        dst.hist[:T, :k] += src.hist[:T, :k].to(dst.device)


def evidence_count(stats: sk.TaskStats, expected: bool) -> torch.Tensor:
    """Per task, how many scored drafts an acceptance estimate rests on: drafted positions
    for the expected acceptance (a mean over them), tested drafts for the realised rate."""
    col = sk.stats.COUNT_DRAFTED if expected else sk.stats.COUNT_TESTED
    return stats.counts[:, col].cpu()
