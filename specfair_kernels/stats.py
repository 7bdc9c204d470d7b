"""Per-task accumulators of speculative-decoding statistics, kept on the device."""
from __future__ import annotations

import math
from typing import Any

import torch

# Column layout of TaskStats.counts (int64, exact) and TaskStats.sums (float64).
# "tested" drafts are those the accept test actually ran on: the accepted ones plus the
# first rejected one; drafts after a rejection are drafted but never tested.
COUNT_DRAFTED, COUNT_ACCEPTED, COUNT_EMITTED, COUNT_STEPS, COUNT_INVALID, COUNT_TESTED = range(6)
COUNT_NAMES = ("drafted", "accepted", "emitted", "steps", "invalid_rows", "tested")
DIVERGENCE_FIELDS = ("alpha", "kl", "ce", "entropy")
"""The divergences `verify` measures per drafted position, in this order everywhere: the
fields of `VerifyOutput`, the tuple a backend returns, and the columns of TaskStats.sums."""
SUM_ALPHA = DIVERGENCE_FIELDS.index("alpha")
SUM_KL = DIVERGENCE_FIELDS.index("kl")
SUM_CE = DIVERGENCE_FIELDS.index("ce")
SUM_ENTROPY = DIVERGENCE_FIELDS.index("entropy")


def speedup(alpha, num_draft: int, cost_ratio: float):
    """Model-based wall-clock speed-up S(alpha; gamma, c) = (1 - a^(g+1)) / ((1 - a)(g c + 1)).

    Leviathan et al. (2023) under i.i.d. acceptance; the limit (g+1)/(g c+1) at alpha = 1.
    Works on floats and tensors.
    """
    g, c = num_draft, cost_ratio
    if isinstance(alpha, torch.Tensor):
        a = alpha.double()
        tokens = torch.where(a < 1, (1 - a ** (g + 1)) / (1 - a).clamp_min(1e-300), torch.full_like(a, g + 1.0))
        return torch.where(torch.isnan(a), a, tokens / (g * c + 1))  # no data stays NaN
    if alpha >= 1:
        return (g + 1) / (g * c + 1)
    return (1 - alpha ** (g + 1)) / ((1 - alpha) * (g * c + 1))


class TaskStats:
    """Per-task counters and divergence sums that `specfair_kernels.verify` adds into in place.

    Parameters
    ----------
    num_tasks : int
        T, the number of tasks; `verify`'s ``task_ids`` must lie in [0, T).
    max_draft : int
        Largest draft length K the accumulator will see (size of the histogram).
    device : torch.device or str, optional
        Where the accumulators live; must be the logits' device.
    deterministic : bool
        If True, float sums are reduced per task in a fixed order (bitwise reproducible
        across runs); otherwise the GPU adds them with atomics.  Integer counters are
        exact either way.

    Attributes
    ----------
    counts : int64 [T, 6]   drafted, accepted, emitted tokens, verification steps, invalid rows,
                            tested drafts (accepted + the first rejected one of each step)
    hist   : int64 [T, K+1] accept-length histogram (number of steps with n accepted drafts)
    sums   : float64 [T, 4] sums of alpha, KL(p||q), CE(p, q), H(p) over drafted positions

    Examples
    --------
    >>> import torch, specfair_kernels as sk
    >>> stats = sk.TaskStats(num_tasks=2, max_draft=4)
    >>> t = torch.randn(3, 5, 16); d = torch.randn(3, 4, 16)
    >>> out = sk.verify(t, d, torch.randint(0, 16, (3, 4)), task_ids=torch.tensor([0, 1, 1]),
    ...                 stats=stats, seed=0)
    >>> int(stats.counts[:, 3].sum())
    3
    """

    def __init__(self, num_tasks: int, max_draft: int, device=None, deterministic: bool = False):
        if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")
        if not isinstance(max_draft, int) or isinstance(max_draft, bool) or max_draft < 0:
            raise ValueError(f"max_draft must be a non-negative int, got {max_draft!r}")
        self.num_tasks = num_tasks
        self.max_draft = max_draft
        self.deterministic = bool(deterministic)
        device = torch.device(device) if device is not None else torch.device("cpu")
        self.counts = torch.zeros(num_tasks, len(COUNT_NAMES), dtype=torch.int64, device=device)
        self.hist = torch.zeros(num_tasks, max_draft + 1, dtype=torch.int64, device=device)
        self.sums = torch.zeros(num_tasks, len(DIVERGENCE_FIELDS), dtype=torch.float64, device=device)

    @property
    def device(self) -> torch.device:
        return self.counts.device

    def __repr__(self) -> str:
        return (f"TaskStats(num_tasks={self.num_tasks}, max_draft={self.max_draft}, "
                f"device={str(self.device)!r}, deterministic={self.deterministic})")

    # --- accumulation -------------------------------------------------------------
    def accumulate(self, task_ids, num_draft, num_accepted, valid, div_sums):
        """Add one verification call's rows (the torch and C++ backends' path).

        task_ids, num_draft, num_accepted: int [B]; valid: bool [B];
        div_sums: float [B, 4] per-row sums of alpha, KL, CE, H over drafted positions.
        """
        t = task_ids.long()
        v = valid.long()
        na = num_accepted.long()
        nd = num_draft.long()
        tested = na + (na < nd).long()
        rows = torch.stack([nd * v, na * v, (na + 1) * v, v, 1 - v, tested * v], 1)
        self.counts.index_add_(0, t, rows)
        self.hist.index_put_((t, na), v, accumulate=True)
        sums = torch.where(valid[:, None], div_sums.double(), 0.0)
        if self.deterministic and self.device.type != "cpu":
            one_hot = torch.nn.functional.one_hot(t, self.num_tasks).double()
            self.sums += one_hot.T @ sums  # a GEMM reduces in a fixed order; index_add_ uses atomics
        else:
            self.sums.index_add_(0, t, sums)

    def reset(self) -> "TaskStats":
        for x in (self.counts, self.hist, self.sums):
            x.zero_()
        return self

    def _check_compatible(self, other: "TaskStats"):
        if not isinstance(other, TaskStats):
            raise TypeError(f"other must be a TaskStats, got {type(other).__name__}")
        if (other.num_tasks, other.max_draft) != (self.num_tasks, self.max_draft):
            raise ValueError(
                f"other has num_tasks={other.num_tasks}, max_draft={other.max_draft}; "
                f"expected {self.num_tasks}, {self.max_draft}")

    def merge(self, other: "TaskStats") -> "TaskStats":
        """Add another accumulator of the same shape into this one (in place); returns self."""
        self._check_compatible(other)
        self.counts += other.counts.to(self.device)
        self.hist += other.hist.to(self.device)
        self.sums += other.sums.to(self.device)
        return self

    def all_reduce(self, group=None) -> "TaskStats":
        """Sum the accumulators over the ranks of a torch.distributed group (in place)."""
        import torch.distributed as dist

        for x in (self.counts, self.hist, self.sums):
            dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
        return self

    def clone(self) -> "TaskStats":
        new = TaskStats(self.num_tasks, self.max_draft, self.device, self.deterministic)
        return new.merge(self)

    # --- derived views (float64 CPU tensors [T]; NaN for a task with no data) --------
    def _ratio(self, num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        num, den = num.double().cpu(), den.double().cpu()
        return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, math.nan))

    def _count(self, col: int) -> torch.Tensor:
        return self.counts[:, col]

    def acceptance_rate(self) -> torch.Tensor:
        """Realised acceptance: accepted / tested drafts, per task.

        Under token verification an unbiased estimate of the per-position acceptance
        probability, so it converges to `expected_acceptance` when positions are alike.
        Under block verification no single position's test decides the length, so it is the
        *effective* acceptance instead: the per-position rate of a token-verification run
        with the same accepted lengths (it can exceed `expected_acceptance`, which is the
        point of block mode).  (accepted / drafted, the share of drafts that survive, is
        ``counts[:, COUNT_ACCEPTED] / counts[:, COUNT_DRAFTED]``.)
        """
        return self._ratio(self._count(COUNT_ACCEPTED), self._count(COUNT_TESTED))

    def _mean(self, col: int) -> torch.Tensor:
        return self._ratio(self.sums[:, col], self._count(COUNT_DRAFTED))

    def expected_acceptance(self) -> torch.Tensor:
        """Mean of alpha = sum min(p, q) over drafted positions, per task."""
        return self._mean(SUM_ALPHA)

    def mean_kl(self) -> torch.Tensor:
        return self._mean(SUM_KL)

    def mean_ce(self) -> torch.Tensor:
        return self._mean(SUM_CE)

    def mean_entropy(self) -> torch.Tensor:
        return self._mean(SUM_ENTROPY)

    def tokens_per_step(self) -> torch.Tensor:
        """Emitted tokens per verification step (per verifier call), per task."""
        return self._ratio(self._count(COUNT_EMITTED), self._count(COUNT_STEPS))

    def expected_speedup(self, cost_ratio: float, num_draft: int | None = None) -> torch.Tensor:
        """S(alpha_t; gamma, c) per task from the expected acceptance (gamma = max_draft by default)."""
        if not (isinstance(cost_ratio, (int, float)) and cost_ratio >= 0):
            raise ValueError(f"cost_ratio must be a non-negative number, got {cost_ratio!r}")
        g = self.max_draft if num_draft is None else num_draft
        return speedup(self.expected_acceptance(), g, float(cost_ratio))

    def unfairness(self, cost_ratio: float = 0.0, num_draft: int | None = None) -> dict[str, float]:
        """Spread across the tasks that have data.

        ``U_ce`` is the paper's unfairness (population variance of per-task CE);
        ``U_kl`` the same for KL.  Acceptance and speed-up get variance and max/min ratio.
        """
        out: dict[str, float] = {}
        views = {
            "ce": self.mean_ce(), "kl": self.mean_kl(),
            "acceptance": self.expected_acceptance(), "realised_acceptance": self.acceptance_rate(),
            "speedup": self.expected_speedup(cost_ratio, num_draft),
        }
        for name, v in views.items():
            v = v[~torch.isnan(v)]
            n = v.numel()
            var = float(((v - v.mean()) ** 2).mean()) if n else math.nan
            if name in ("ce", "kl"):
                out[f"U_{name}"] = var
            else:
                out[f"{name}_variance"] = var
                lo = float(v.min()) if n else math.nan
                out[f"{name}_max_min_ratio"] = float(v.max()) / lo if n and lo > 0 else math.nan
        return out

    def to_dict(self, cost_ratio: float = 0.0) -> dict[str, Any]:
        """Plain-Python summary for reports (JSON-serialisable; NaN for tasks with no data)."""
        per_task = {
            **{name: self.counts[:, i].tolist() for i, name in enumerate(COUNT_NAMES)},
            "accept_length_histogram": self.hist.tolist(),
            "acceptance_rate": self.acceptance_rate().tolist(),
            "expected_acceptance": self.expected_acceptance().tolist(),
            "mean_kl": self.mean_kl().tolist(),
            "mean_ce": self.mean_ce().tolist(),
            "mean_entropy": self.mean_entropy().tolist(),
            "tokens_per_step": self.tokens_per_step().tolist(),
            "expected_speedup": self.expected_speedup(cost_ratio).tolist(),
        }
        return {"num_tasks": self.num_tasks, "max_draft": self.max_draft, "cost_ratio": cost_ratio,
                "per_task": per_task, "unfairness": self.unfairness(cost_ratio)}
