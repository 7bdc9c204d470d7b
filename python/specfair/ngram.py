"""A model-free n-gram (prompt-lookup) drafter for `SpeculativeGenerator`.

Per row and step it looks for the most recent *earlier* occurrence of the row's last ``n``
tokens in the prompt plus the text generated so far, trying ``n = max_ngram .. min_ngram``,
and drafts the (up to K) tokens that followed that occurrence.  A row with no match drafts
nothing that step (the generator's ragged ``num_draft`` handles it).  The drafts are
deterministic, i.e. one-hot q, so `specfair_kernels.verify` with ``draft_logits=None`` keeps
the output exactly distributed as the verifier's.

The search is vectorised over the batch: for each ``n`` one ``unfold`` of the history and one
comparison with every row's suffix, O(b * L * n) work on the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._util import is_int

__all__ = ["NgramConfig", "ngram_drafts"]


@dataclass(frozen=True)
class NgramConfig:
    """Settings of the n-gram drafter: suffix lengths tried from ``max_ngram`` down to
    ``min_ngram`` (the longest match wins; among its matches the most recent)."""

    max_ngram: int = 3
    min_ngram: int = 1

    def __post_init__(self):
        for name in ("max_ngram", "min_ngram"):
            v = getattr(self, name)
            if not is_int(v) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.min_ngram > self.max_ngram:
            raise ValueError(f"min_ngram={self.min_ngram} must be <= max_ngram={self.max_ngram}")


def ngram_drafts(history: torch.Tensor, start: torch.Tensor, end: torch.Tensor, num_draft: int,
                 config: NgramConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt-lookup drafts for every row.

    Parameters
    ----------
    history : int [b, L]
        Each row's tokens; row i's text is ``history[i, start[i]:end[i]]``.
    start, end : int [b] (on history's device)
    num_draft : int >= 0
        K, the most drafts per row.
    config : NgramConfig

    Returns
    -------
    drafts : int64 [b, K]; entries past a row's count are 0.
    count : int64 [b]; drafts found per row (0 when no suffix of length in
        ``[min_ngram, max_ngram]`` occurred earlier).
    """
    b, L = history.shape
    dev = history.device
    K = int(num_draft)
    count = torch.zeros(b, dtype=torch.int64, device=dev)
    follow = torch.zeros(b, dtype=torch.int64, device=dev)  # index of the first drafted token
    if K == 0 or b == 0:
        return torch.zeros(b, K, dtype=torch.int64, device=dev), count
    found = torch.zeros(b, dtype=torch.bool, device=dev)
    for n in range(config.max_ngram, config.min_ngram - 1, -1):
        if n >= L:
            continue
        suffix_idx = (end[:, None] - n + torch.arange(n, device=dev)).clamp(0, L - 1)
        suffix = history.gather(1, suffix_idx)                             # [b, n]
        windows = history.unfold(1, n, 1)                                  # [b, L-n+1, n]
        s = torch.arange(windows.shape[1], device=dev)
        # an earlier occurrence: inside the row's text and followed by at least one token of it
        ok = (s[None] >= start[:, None]) & (s[None] + n <= end[:, None] - 1) & (end - start >= n)[:, None]
        hit = (windows == suffix[:, None, :]).all(-1) & ok
        last = torch.where(hit, s[None], -1).amax(1)                       # most recent match, -1: none
        new = (last >= 0) & ~found
        follow = torch.where(new, last + n, follow)
        found = found | new
    count = torch.where(found, (end - follow).clamp(min=0, max=K), count)
    idx = (follow[:, None] + torch.arange(K, device=dev)).clamp(max=L - 1)
    drafts = history.gather(1, idx)
    drafts = torch.where(torch.arange(K, device=dev)[None] < count[:, None], drafts, 0)
    return drafts, count
