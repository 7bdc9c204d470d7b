"""What determines an s-CDF run (`ScdfConfig`), its result, and the task weights: the
per-task sampling probabilities of each method and the running per-task divergence they
come from.  The method itself is described in `specfair.scdf`."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ._util import check_fields
from .objectives import OBJECTIVES, WEIGHT_KINDS

SHARDS = ("ddp", "fsdp")

__all__ = ["METHODS", "LOSS_KINDS", "WEIGHT_KINDS", "LORA_TARGETS", "RESUME_FREE", "ScdfConfig", "ScdfError",
           "ScdfResult", "RunningDivergence", "task_probabilities"]

METHODS = ("uniform", "balanced", "temperature", "scdf")
LOSS_KINDS = OBJECTIVES
"""Training objectives (`specfair.objectives`): kl, ce, tv, and the LK losses neg_log_alpha and kl_tv."""
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RESUME_FREE = ("resume", "stop_after", "progress", "evaluate", "log_every", "out_dir", "gguf_cache")
"""Config fields that may differ between a run and the run that resumes it."""


class ScdfError(ValueError):
    """Bad configuration or input (the message says what to change)."""


@dataclass
class ScdfConfig:
    """Everything that determines an s-CDF (or baseline) run."""

    out_dir: str = "scdf-out"
    method: str = "scdf"
    verifier: str | None = None          # a from_pretrained path or id; None: the shipped pair
    drafter: str | None = None
    # --- data (the corpus's TRAINING split feeds training; held-out only evaluation)
    corpus_source: str = "default"
    corpus_options: dict = field(default_factory=dict)
    tasks: list[str] | None = None
    heldout_fraction: float = 0.1
    validation_fraction: float = 0.1     # carved from training text: where knobs are chosen (scdf_compare)
    corpus_seed: int = 0
    max_items_per_task: int | None = None
    context_length: int = 128
    # --- budget: steps x batch_size windows x context_length tokens, per rank
    steps: int = 250
    batch_size: int = 8
    # --- optimisation
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    temperature_lr: float = 0.02          # the "temperature" method's lr for log(tau)
    # --- objective and weights
    loss: str = "kl"                      # objective, one of LOSS_KINDS (specfair.objectives)
    task_losses: dict = field(default_factory=dict)   # task -> objective, overriding ``loss`` for that task
    lk_eta: float = 3.0                   # kl_tv: lambda = exp(-lk_eta * mean alpha of the batch)
    weight_divergence: str = "kl"
    temperature: float = 1.0
    uniform_mix: float = 0.5
    balance_mix: float = 1.0              # "balanced": p_t = (1 - mix) n_t / sum n + mix / m
    stats_decay: float = 0.9
    init_windows_per_task: int = 2
    # --- drafter parametrisation
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    # --- run
    seed: int = 0
    checkpoint_every: int = 50
    resume: bool = False
    stop_after: int | None = None         # stop (without a final checkpoint) after this step: a simulated kill
    device: str = "cpu"
    shard: str = "ddp"                    # under torchrun: "ddp" (replicas) or "fsdp" (FSDP2 fully_shard)
    bf16_autocast_on_cuda: bool = True
    backend: str = "auto"
    progress: bool = True
    log_every: int = 10
    gguf_cache: bool = True               # GGUF files: read/keep the dense copy (specfair.gguf_cache)
    # --- held-out evaluation (specfair.teacher_forced), before and after
    evaluate: bool = True
    eval_tokens_per_task: int = 4096
    eval_batch_size: int = 16
    num_draft: int = 4
    cost_ratio: float | None = None       # None: drafter / verifier parameter count

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ScdfConfig":
        check_fields(cls, d, ScdfError)
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ScdfError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.loss not in LOSS_KINDS:
            raise ScdfError(f"loss must be one of {LOSS_KINDS}, got {self.loss!r}")
        bad = {t: k for t, k in self.task_losses.items() if k not in LOSS_KINDS}
        if bad:
            raise ScdfError(f"task_losses: objectives must be among {LOSS_KINDS}, got {bad}")
        if not (self.lk_eta >= 0 and math.isfinite(self.lk_eta)):
            raise ScdfError(f"lk_eta must be finite and >= 0, got {self.lk_eta}")
        if self.weight_divergence not in WEIGHT_KINDS:
            raise ScdfError(f"weight_divergence must be one of {WEIGHT_KINDS}, got {self.weight_divergence!r}")
        for name in ("steps", "batch_size", "context_length", "checkpoint_every", "log_every",
                     "eval_tokens_per_task", "eval_batch_size", "num_draft"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ScdfError(f"{name} must be a positive int, got {v!r}")
        for name in ("init_windows_per_task", "warmup_steps", "lora_rank"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ScdfError(f"{name} must be a non-negative int, got {v!r}")
        if not self.lr > 0 or not self.temperature_lr > 0:
            raise ScdfError("lr and temperature_lr must be > 0")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ScdfError(f"temperature must be finite and > 0, got {self.temperature}")
        if not 0 <= self.uniform_mix <= 1:
            raise ScdfError(f"uniform_mix must be in [0, 1], got {self.uniform_mix}")
        if not 0 <= self.balance_mix <= 1:
            raise ScdfError(f"balance_mix must be in [0, 1], got {self.balance_mix}")
        if not 0 <= self.validation_fraction <= 1 - self.heldout_fraction:
            raise ScdfError(f"validation_fraction must be in [0, 1 - heldout_fraction], got {self.validation_fraction}")
        if not 0 <= self.stats_decay < 1:
            raise ScdfError(f"stats_decay must be in [0, 1), got {self.stats_decay}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ScdfError(f"stop_after must be >= 1 or None, got {self.stop_after}")
        if self.shard not in SHARDS:
            raise ScdfError(f"shard must be one of {SHARDS}, got {self.shard!r}")
        if self.shard == "fsdp" and (self.lora_rank or self.method == "temperature"):
            raise ScdfError("shard='fsdp' trains full weights: it takes neither lora_rank > 0 nor the temperature "
                            "method (one scalar); use shard='ddp' for those")
        if self.method == "temperature" and self.lora_rank:
            raise ScdfError("the temperature method trains no weights; lora_rank must be 0")


@dataclass
class ScdfResult:
    """What `train` returns (rank 0 holds the evaluation)."""

    config: ScdfConfig
    drafter: Any                      # the fine-tuned drafter (merged, plain model)
    history: list[dict]
    report: dict
    before: Any = None                # teacher_forced.TeacherForcedResult or None
    after: Any = None


# ----------------------------------------------------------------------------- weights
def task_probabilities(method: str, divergence, train_tokens, uniform_mix: float, balance_mix: float = 1.0):
    """Per-task sampling probabilities ([m] float64 tensor) for a method.

    divergence : [m] current D_t estimates (only ``scdf`` uses them)
    train_tokens : [m] training tokens per task (``uniform``, and ``balanced`` with
        ``balance_mix < 1``, use them)
    balance_mix : ``balanced`` mixes ``(1 - balance_mix)`` of token-proportional sampling
        into the flat 1/m (1: fully balanced, 0: the same as ``uniform``)
    """
    d = torch.as_tensor(divergence, dtype=torch.float64)
    m = d.numel()
    flat = torch.full((m,), 1.0 / m, dtype=torch.float64)
    if method == "uniform" or (method == "balanced" and balance_mix < 1):
        n = torch.as_tensor(train_tokens, dtype=torch.float64)
        prop = n / n.sum()
        return prop if method == "uniform" else (1 - balance_mix) * prop + balance_mix * flat
    if method in ("balanced", "temperature"):
        return flat
    if method != "scdf":
        raise ScdfError(f"method must be one of {METHODS}, got {method!r}")
    w = (d - d.min()).clamp_min(0)                # shift-by-minimum, detached, >= 0
    if not torch.isfinite(w).all() or float(w.sum()) <= 0:
        return flat
    return (1 - uniform_mix) * w / w.sum() + uniform_mix * flat


class RunningDivergence:
    """Per-task exponential moving sums of the weight divergence and of alpha (fp64).

    ``update(sums [m, 2], tokens [m])``: tasks with tokens decay their sums by ``decay``
    and add the new ones; the others keep theirs.  ``mean()`` -> [m, 2]."""

    def __init__(self, num_tasks: int, decay: float):
        self.decay = decay
        self.sums = torch.zeros(num_tasks, 2, dtype=torch.float64)
        self.tokens = torch.zeros(num_tasks, dtype=torch.float64)

    def update(self, sums, tokens):
        seen = tokens > 0
        f = torch.where(seen, torch.full_like(self.tokens, self.decay), torch.ones_like(self.tokens))
        self.sums = self.sums * f[:, None] + sums
        self.tokens = self.tokens * f + tokens

    def mean(self):
        return torch.where(self.tokens[:, None] > 0, self.sums / self.tokens.clamp_min(1e-300)[:, None],
                           torch.full_like(self.sums, math.nan))

    def state_dict(self):
        return {"sums": self.sums.clone(), "tokens": self.tokens.clone(), "decay": self.decay}

    def load_state_dict(self, s):
        self.sums, self.tokens, self.decay = s["sums"].clone(), s["tokens"].clone(), s["decay"]
