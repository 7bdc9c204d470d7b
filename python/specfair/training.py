"""Pieces of a training loop that `specfair train-pair` and s-CDF share: drawing training
windows per task, the learning-rate schedule, AdamW parameter groups and weight
fingerprints."""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import torch


class WindowSampler:
    """Draws [B, T+1] token windows: a task per window from given probabilities, then a
    uniform offset in that task's stream (a stream shorter than T+1 is tiled).

    One ``torch.Generator`` seeded with ``seed`` drives every draw, so a sampler replays
    exactly from its seed, or from ``gen.get_state()``."""

    def __init__(self, streams: Sequence[torch.Tensor], context_length: int, seed: int,
                 names: Sequence[str] | None = None, error: type[Exception] = ValueError):
        self.T = context_length
        self.streams = []
        for i, s in enumerate(streams):
            if len(s) < 2:
                name = names[i] if names is not None else f"#{i}"
                raise error(f"task {name!r} has no training text (a stream of >= 2 tokens is needed)")
            if len(s) < self.T + 1:
                s = s.repeat(math.ceil((self.T + 1) / len(s)))
            self.streams.append(s)
        self.gen = torch.Generator().manual_seed(seed)

    def window(self, task: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """One window [T+1] of ``task`` (offset drawn from ``generator``, default the sampler's)."""
        s = self.streams[task]
        off = int(torch.randint(0, len(s) - self.T, (1,), generator=generator or self.gen))
        return s[off: off + self.T + 1]

    def sample(self, probs: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(windows [batch_size, T+1], their tasks [batch_size]); tasks drawn with replacement."""
        tasks = torch.multinomial(probs, batch_size, replacement=True, generator=self.gen)
        return torch.stack([self.window(t) for t in tasks.tolist()]), tasks


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``base_lr * min_lr_ratio`` at
    ``total_steps``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def decay_groups(params, weight_decay: float, **extra) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on vectors (norms, biases); empty groups
    dropped.  ``extra`` keys are added to both groups."""
    params = [p for p in params if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, **extra},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, **extra}]
    return [g for g in groups if g["params"]]


def fingerprint(model) -> str:
    """BLAKE2b over every parameter's and buffer's name, dtype, shape and bytes: equal
    fingerprints mean bit-identical weights."""
    h = hashlib.blake2b(digest_size=32)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        x = t.detach().contiguous().cpu()
        h.update(f"{name}|{x.dtype}|{tuple(x.shape)}".encode())
        h.update(x.view(torch.uint8).numpy().tobytes() if x.numel() else b"")
    return h.hexdigest()
