"""s-CDF: stochastic corrective drafter fine-tuning, and the baselines it must beat (issue 7).

Only the drafter learns.  The verifier is frozen (its parameters are fingerprinted at the
start and checked bit for bit at the end), so with lossless verification the output
distribution of speculative decoding does not change at all, only who gets it faster.

``train(ScdfConfig(...))`` runs one method for a fixed budget of optimiser steps, each
step ``batch_size`` windows of ``context_length`` tokens per rank (the same tokens and
steps for every method):

``uniform``      plain distillation: windows drawn uniformly from the pooled training
                 split of every task (a task's chance is its share of training tokens).
``balanced``     data balancing: each task equally likely (1/m), then a uniform window.
``temperature``  temperature tuning: the drafter's weights stay as they are and one
                 scalar softmax temperature tau of the drafter (q = softmax(z / tau)) is
                 fitted by the same loss on balanced batches.  tau is then folded into the
                 weights (the final RMSNorm's scale is divided by tau, which divides the
                 logits by tau exactly, since the output layer is linear without bias), so
                 the saved drafter is a plain model.  The paper names "temperature
                 tuning" without a definition we could read; we take the drafter-
                 temperature calibration that speculative-decoding deployments use (no
                 new data, one scalar).  Not implemented: the distillation temperature,
                 and temperature-based task sampling p_t ~ n_t^(1/tau), which on this
                 corpus (every language about the same amount of text) is close to
                 ``balanced``.
``scdf``         s-CDF: task t is drawn with probability
                 ``p_t = (1 - eps) * w_t / sum_j w_j + eps / m`` with
                 ``w_t = D_t - min_j D_j`` (shift-by-minimum: the best task gets 0, the
                 weights are detached and >= 0), then a uniform window of that task.
                 Sampling tasks in proportion to w_t makes the expected gradient of the
                 per-batch mean loss proportional to sum_t w_t grad D_t, the paper's shaped
                 gradient (1/m) sum_t w_t grad D_t, up to a positive factor that Adam
                 does not see.  If every w_t is 0 (all tasks equal) sampling is balanced.

Choices the paper leaves open, and what this module does
--------------------------------------------------------
* Loss: ``token_divergence(draft_logits, target_logits, kind=config.loss)`` per token,
  averaged over the batch's tokens, soft targets p from the verifier on the training
  split at ``temperature`` (1 by default, the temperature the audit measures at).
  Default ``kind="kl"``: KL(p || q) and CE(p, q) differ by H(p), which does not depend on
  the drafter, so both give the same gradient (q - p) / T; KL is reported because its
  value is the part the drafter can remove (0 at a perfect fit).  ``"tv"`` (= 1 - alpha,
  the acceptance itself) is available but its gradient vanishes wherever q > p.
* D_t (the weights' divergence): KL(p || q) by default (``weight_divergence``), not CE:
  CE adds the verifier's own entropy H(p), which differs by language and tokenizer and
  which no drafter can remove (PAPER.md: across languages KL tracked acceptance far
  better than CE).  ``weight_divergence="ce"`` gives the paper's reconstructed D_t.
* Estimating D_t as training goes: every training batch's per-token divergences (the
  loss pass itself, through ``token_divergence``; no extra forward) are summed per task,
  all-reduced across ranks, and folded into a per-task exponential moving average: on
  each step that task t gets tokens, ``S_t <- decay * S_t + s_t`` and
  ``N_t <- decay * N_t + n_t``, and D_t = S_t / N_t (a task that is not drawn keeps its
  last estimate).  Before step 0, D_t is seeded from ``init_windows_per_task`` training
  windows per task (no gradient).  Every method keeps these statistics (they are logged),
  only ``scdf`` samples by them.
* eps (``uniform_mix``, default 0.5): a floor so that every task, the best included, is
  still visited (its D_t stays fresh, and it is not forgotten).  With the shifted
  weights alone the best tasks are never drawn and lose acceptance: on the default pair
  (H100, 3 seeds, 250 steps) eps = 0.3 cut the alpha variance by 63% but cost the best
  task (zh_CN) up to 1.4 points; eps = 0.5 cut it by 58% with no task losing more than
  0.6 point.  The split of the budget is then half "where it is slowest", half balanced.
* Stochastic: per step, tasks are drawn independently for each window (multinomial with
  replacement), so a batch mixes tasks; the probabilities are recomputed every step.
* Drafter: full fine-tuning by default; ``lora_rank > 0`` trains LoRA adapters (peft) on
  the attention and MLP projections, merged into the weights at the end.
* Optimiser: AdamW, linear warm-up then cosine decay to ``lr * min_lr_ratio``, gradient
  clipping, no weight decay (a fine-tune that should stay close to its start).
* Distributed: under ``torchrun`` (WORLD_SIZE > 1) the drafter is wrapped in
  DistributedDataParallel (gloo on the CPU, NCCL on CUDA), each rank draws its own
  windows from its own generator (seeded by seed and rank), and the per-task sums are
  all-reduced every step, so every rank holds the same D_t and the same sampling
  probabilities.  ``batch_size`` is per rank.  Rank 0 writes checkpoints and outputs.
* Checkpoints: ``<out_dir>/checkpoint.pt``, written to a temporary file in the same
  directory, fsync'd, then renamed over the old one, every ``checkpoint_every`` steps.
  It holds the config, the step, the trainable state, the optimiser, the running
  statistics, the history and every rank's random state.  ``resume=True`` continues from
  it and gives bitwise the same drafter as an uninterrupted run with the same seed.

Outputs in ``out_dir``: ``drafter/`` (``save_pretrained`` + tokenizer), ``scdf_report.json``
(config, history of losses, D_t and sampling probabilities, before/after held-out figures
when ``evaluate``), and the checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["METHODS", "ScdfConfig", "ScdfError", "ScdfResult", "task_probabilities", "train",
           "add_arguments", "main_from_args", "main"]

METHODS = ("uniform", "balanced", "temperature", "scdf")
LOSS_KINDS = ("kl", "ce", "tv")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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
    loss: str = "kl"
    weight_divergence: str = "kl"
    temperature: float = 1.0
    uniform_mix: float = 0.5
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
    bf16_autocast_on_cuda: bool = True
    backend: str = "auto"
    progress: bool = True
    log_every: int = 10
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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ScdfError(f"unknown config field(s) {unknown}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ScdfError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.loss not in LOSS_KINDS:
            raise ScdfError(f"loss must be one of {LOSS_KINDS}, got {self.loss!r}")
        if self.weight_divergence not in LOSS_KINDS:
            raise ScdfError(f"weight_divergence must be one of {LOSS_KINDS}, got {self.weight_divergence!r}")
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
        if not 0 <= self.stats_decay < 1:
            raise ScdfError(f"stats_decay must be in [0, 1), got {self.stats_decay}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ScdfError(f"stop_after must be >= 1 or None, got {self.stop_after}")
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
def task_probabilities(method: str, divergence, train_tokens, uniform_mix: float):
    """Per-task sampling probabilities ([m] float64 tensor) for a method.

    divergence : [m] current D_t estimates (only ``scdf`` uses them)
    train_tokens : [m] training tokens per task (only ``uniform`` uses them)
    """
    import torch

    d = torch.as_tensor(divergence, dtype=torch.float64)
    m = d.numel()
    flat = torch.full((m,), 1.0 / m, dtype=torch.float64)
    if method == "uniform":
        n = torch.as_tensor(train_tokens, dtype=torch.float64)
        return n / n.sum()
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
        import torch

        self.decay = decay
        self.sums = torch.zeros(num_tasks, 2, dtype=torch.float64)
        self.tokens = torch.zeros(num_tasks, dtype=torch.float64)

    def update(self, sums, tokens):
        import torch

        seen = tokens > 0
        f = torch.where(seen, torch.full_like(self.tokens, self.decay), torch.ones_like(self.tokens))
        self.sums = self.sums * f[:, None] + sums
        self.tokens = self.tokens * f + tokens

    def mean(self):
        import torch

        return torch.where(self.tokens[:, None] > 0, self.sums / self.tokens.clamp_min(1e-300)[:, None],
                           torch.full_like(self.sums, math.nan))

    def state_dict(self):
        return {"sums": self.sums.clone(), "tokens": self.tokens.clone(), "decay": self.decay}

    def load_state_dict(self, s):
        self.sums, self.tokens, self.decay = s["sums"].clone(), s["tokens"].clone(), s["decay"]


# ----------------------------------------------------------------------------- data
class TaskWindowSampler:
    """Draws [B, T+1] training windows: a task per window from given probabilities, then a
    uniform offset in that task's stream (streams shorter than T+1 are tiled)."""

    def __init__(self, streams: list, context_length: int, seed: int):
        import torch

        self.T = context_length
        self.streams = []
        for s in streams:
            if len(s) < 2:
                raise ScdfError("every task needs training text (a stream of >= 2 tokens)")
            if len(s) < self.T + 1:
                s = s.repeat(math.ceil((self.T + 1) / len(s)))
            self.streams.append(s)
        self.gen = torch.Generator().manual_seed(seed)

    def window(self, task: int):
        import torch

        s = self.streams[task]
        off = int(torch.randint(0, len(s) - self.T, (1,), generator=self.gen))
        return s[off: off + self.T + 1]

    def sample(self, probs, batch_size: int):
        import torch

        tasks = torch.multinomial(probs, batch_size, replacement=True, generator=self.gen)
        return torch.stack([self.window(t) for t in tasks.tolist()]), tasks


# ----------------------------------------------------------------------------- helpers
def _device(name: str):
    from ._common import resolve_device

    return resolve_device(name, ScdfError)


def fingerprint(model) -> str:
    """BLAKE2b over every parameter's and buffer's name, dtype, shape and bytes: equal
    fingerprints mean bit-identical weights."""
    import torch

    h = hashlib.blake2b(digest_size=32)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        x = t.detach().contiguous().cpu()
        h.update(f"{name}|{x.dtype}|{tuple(x.shape)}".encode())
        h.update(x.view(torch.uint8).numpy().tobytes() if x.numel() else b"")
    return h.hexdigest()


def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    from ._common import atomic_write

    atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def _atomic_write_json(path: Path, obj) -> None:
    from .train_pair import _atomic_write_json as write

    write(Path(path), obj)


def _lr_at(step: int, cfg: ScdfConfig, base: float) -> float:
    if step < cfg.warmup_steps:
        return base * (step + 1) / cfg.warmup_steps
    t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return base * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _dist():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def _maybe_init_distributed(device):
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        return True
    return False


def _student_module(drafter, method: str):
    """The trainable side as one Module (what DDP wraps): the drafter (maybe with LoRA)
    and a log-temperature, trained only by the temperature method."""
    import torch

    class Student(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.drafter = drafter
            self.log_tau = torch.nn.Parameter(torch.zeros((), dtype=torch.float32),
                                              requires_grad=(method == "temperature"))

        def forward(self, input_ids):
            logits = self.drafter(input_ids=input_ids, use_cache=False).logits
            if method == "temperature":
                logits = logits / self.log_tau.exp().to(logits.dtype)
            return logits

    return Student()


def _load_models(cfg: ScdfConfig):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import default_pair_path

    vpath = cfg.verifier or str(default_pair_path("verifier"))
    dpath = cfg.drafter or str(default_pair_path("drafter"))
    verifier = AutoModelForCausalLM.from_pretrained(vpath)
    drafter = AutoModelForCausalLM.from_pretrained(dpath)
    tokenizer = AutoTokenizer.from_pretrained(vpath)
    return verifier, drafter, tokenizer


def _fold_temperature(drafter, tau: float):
    """Divide the logits by tau for good: scale the final norm (the output layer is linear)."""
    import torch

    norm = getattr(getattr(drafter, "model", None), "norm", None)
    head = drafter.get_output_embeddings()
    if norm is None or getattr(norm, "weight", None) is None or getattr(head, "bias", None) is not None:
        raise ScdfError("temperature tuning folds tau into the final norm's weight (model.model.norm) "
                        "and needs an output layer without bias; this drafter has neither")
    with torch.no_grad():
        norm.weight.div_(tau)


# ----------------------------------------------------------------------------- train
def train(config: ScdfConfig, *, verifier=None, drafter=None, tokenizer=None, corpus=None,
          eval_cache: dict | None = None) -> ScdfResult:
    """Fine-tune the drafter with ``config.method`` (see the module docstring).

    The models, tokenizer and corpus may be passed in (already loaded); otherwise they
    are loaded from ``config.verifier`` / ``config.drafter`` (default: the shipped pair)
    and ``config.corpus_source``.  A passed-in ``drafter`` is trained in place.
    ``eval_cache`` (a dict, filled on first use) lets several runs share the held-out
    windows and the verifier's held-out logits.
    """
    import torch

    from . import corpus as corpus_mod
    from . import teacher_forced as tf

    import specfair_kernels as sk

    cfg = config
    cfg.validate()
    device = _device(cfg.device)
    launched = _maybe_init_distributed(device)
    dist, rank, world = _dist()
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    out = Path(cfg.out_dir)
    ec = eval_cache if eval_cache is not None else {}
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    try:
        if verifier is None or drafter is None or tokenizer is None:
            v, d, tk = _load_models(cfg)
            verifier, drafter, tokenizer = verifier or v, drafter or d, tokenizer or tk
        if corpus is None:
            corpus = corpus_mod.load_corpus(cfg.corpus_source, tasks=cfg.tasks,
                                            heldout_fraction=cfg.heldout_fraction, seed=cfg.corpus_seed,
                                            max_items_per_task=cfg.max_items_per_task, **cfg.corpus_options)
        names = [t for t in corpus.task_names if corpus.tasks[t].train]
        if len(names) < 2:
            raise ScdfError(f"s-CDF needs at least 2 tasks with training text, got {names}")
        m = len(names)
        train_streams = tf.token_streams(tokenizer, {t: corpus.tasks[t].train for t in names})
        train_tokens = torch.tensor([len(train_streams[t]) for t in names], dtype=torch.float64)

        verifier.to(device).eval().requires_grad_(False)
        verifier_print = fingerprint(verifier)
        drafter.to(device)
        n_ver = sum(p.numel() for p in verifier.parameters())
        n_dra = sum(p.numel() for p in drafter.parameters())
        cost_ratio = cfg.cost_ratio if cfg.cost_ratio is not None else n_dra / n_ver

        # --- held-out evaluation before (rank 0)
        before = None
        if cfg.evaluate and rank == 0:
            _ensure_eval_cache(ec, cfg, verifier, tokenizer, corpus, names, device)
            before = ec.get("before")
            if before is None:
                before = tf.evaluate(None, drafter, ec["windows"], temperature=cfg.temperature,
                                     batch_size=cfg.eval_batch_size, device=device, backend=cfg.backend,
                                     target_logits=ec["target_logits"])
                ec["before"] = before

        # --- trainable parametrisation
        if cfg.lora_rank:
            from peft import LoraConfig, get_peft_model

            present = {n.rsplit(".", 1)[-1] for n, _ in drafter.named_modules()}
            targets = [t for t in LORA_TARGETS if t in present]
            if not targets:
                raise ScdfError(f"LoRA: the drafter has none of the modules {LORA_TARGETS}")
            torch.manual_seed(cfg.seed)
            drafter = get_peft_model(drafter, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                                         lora_dropout=cfg.lora_dropout,
                                                         target_modules=targets))
        elif cfg.method == "temperature":
            drafter.requires_grad_(False)
        else:
            drafter.requires_grad_(True)
        drafter.train()
        student = _student_module(drafter, cfg.method).to(device)
        trainable = [p for p in student.parameters() if p.requires_grad]
        if cfg.method == "temperature":
            groups = [{"params": [student.log_tau], "weight_decay": 0.0, "base_lr": cfg.temperature_lr}]
        else:
            groups = [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": cfg.weight_decay,
                       "base_lr": cfg.lr},
                      {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0, "base_lr": cfg.lr}]
        groups = [g for g in groups if g["params"]]
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8)
        model = student
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(student, device_ids=[device.index] if device.type == "cuda" else None)

        sampler = TaskWindowSampler([train_streams[t] for t in names], cfg.context_length,
                                    seed=cfg.seed * 7919 + rank)
        stats = RunningDivergence(m, cfg.stats_decay)
        history: list[dict] = []
        start_step = 0
        ckpt_path = out / "checkpoint.pt"
        tokens_local = torch.zeros(m, dtype=torch.float64)
        tokens_global = torch.zeros(m, dtype=torch.float64)
        use_amp = device.type == "cuda" and cfg.bf16_autocast_on_cuda

        def reduce_(x):
            if world > 1:
                y = x.to(device)
                dist.all_reduce(y, op=dist.ReduceOp.SUM)
                return y.cpu()
            return x

        def divergences(x, y_mask, task_rows, with_grad):
            """Loss pass on a batch: returns (loss, per-task sums [m, 2], per-task tokens [m])."""
            with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                lp = verifier(input_ids=x, use_cache=False).logits
            ctx = torch.enable_grad() if with_grad else torch.no_grad()
            with ctx:
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                    lq = model(x)
                task_tok = task_rows[:, None].expand_as(y_mask)
                vals = sk.token_divergence(lq, lp, kind=cfg.loss, temperature=cfg.temperature,
                                           reduction="none", mask=y_mask, backend=cfg.backend)
                n = y_mask.sum()
                loss = vals.sum() / n.clamp_min(1)
            with torch.no_grad():
                wv = vals.detach() if cfg.weight_divergence == cfg.loss else sk.token_divergence(
                    lq.detach(), lp, kind=cfg.weight_divergence, temperature=cfg.temperature,
                    reduction="none", mask=y_mask, backend=cfg.backend)
                av = sk.token_divergence(lq.detach(), lp, kind="alpha", temperature=cfg.temperature,
                                         reduction="none", mask=y_mask, backend=cfg.backend)
                t = task_tok[y_mask]
                sums = torch.zeros(m, 2, dtype=torch.float64, device=device)
                sums[:, 0].index_add_(0, t, wv[y_mask].double())
                sums[:, 1].index_add_(0, t, av[y_mask].double())
                toks = torch.zeros(m, dtype=torch.float64, device=device).index_add_(
                    0, t, torch.ones_like(t, dtype=torch.float64))
            return loss, sums.cpu(), toks.cpu()

        # --- resume, or seed the per-task estimates
        if cfg.resume and ckpt_path.is_file():
            ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            _check_resume_config(ck["config"], cfg)
            if ck["world_size"] != world:
                raise ScdfError(f"checkpoint was written by {ck['world_size']} ranks, this run has {world}")
            if ck["verifier_fingerprint"] != verifier_print:
                raise ScdfError("the checkpoint was made with another verifier")
            student.load_state_dict({k: v.to(device) for k, v in ck["student"].items()})
            opt.load_state_dict(ck["optimizer"])
            stats.load_state_dict(ck["stats"])
            history = ck["history"]
            start_step = ck["step"]
            tokens_local = ck["tokens_local"][rank].clone()
            tokens_global = ck["tokens_global"].clone()
            r = ck["rng"][rank]
            sampler.gen.set_state(r["sampler"])
            torch.set_rng_state(r["torch"])
            if device.type == "cuda" and r.get("cuda") is not None:
                torch.cuda.set_rng_state(r["cuda"], device)
        else:
            g = torch.Generator().manual_seed(cfg.seed * 7919 + 104729 + rank)
            probe_x, probe_t = [], []
            for ti in range(m):
                for _ in range(cfg.init_windows_per_task):
                    s = sampler.streams[ti]
                    off = int(torch.randint(0, len(s) - cfg.context_length, (1,), generator=g))
                    probe_x.append(s[off: off + cfg.context_length + 1]); probe_t.append(ti)
            if probe_x:
                X = torch.stack(probe_x); Tt = torch.tensor(probe_t)
                sums = torch.zeros(m, 2, dtype=torch.float64); toks = torch.zeros(m, dtype=torch.float64)
                student.eval()
                for i in range(0, len(X), cfg.batch_size):
                    xb = X[i:i + cfg.batch_size].to(device)
                    _, s_, n_ = divergences(xb[:, :-1], torch.ones_like(xb[:, 1:], dtype=torch.bool),
                                            Tt[i:i + cfg.batch_size].to(device), False)
                    sums += s_; toks += n_
                student.train()
                stats.update(reduce_(sums), reduce_(toks))

        # --- the loop
        from tqdm.auto import tqdm

        bar = tqdm(range(start_step, cfg.steps), desc=f"s-CDF [{cfg.method}]", initial=start_step,
                   total=cfg.steps, disable=not (cfg.progress and rank == 0), dynamic_ncols=True)
        step = start_step
        for step in bar:
            est = stats.mean()
            probs = task_probabilities(cfg.method, est[:, 0], train_tokens, cfg.uniform_mix)
            for gr in opt.param_groups:
                gr["lr"] = _lr_at(step, cfg, gr["base_lr"])
            batch, tasks = sampler.sample(probs, cfg.batch_size)
            batch = batch.to(device)
            x, y = batch[:, :-1], batch[:, 1:]
            mask = torch.ones_like(y, dtype=torch.bool)
            loss, sums, toks = divergences(x, mask, tasks.to(device), True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            opt.step()
            tokens_local += toks
            sums_g, toks_g = reduce_(sums), reduce_(toks)
            tokens_global += toks_g
            stats.update(sums_g, toks_g)
            loss_g = float(reduce_(loss.detach().double().cpu().reshape(1)) / world)
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                # the estimates this step sampled by (before its own batch was folded in)
                history.append({
                    "step": step, "loss": loss_g, "lr": opt.param_groups[0]["lr"], "grad_norm": float(gnorm),
                    "tau": float(student.log_tau.detach().exp()),
                    "divergence": est[:, 0].tolist(), "alpha": est[:, 1].tolist(),
                    "probabilities": probs.tolist(), "batch_tasks": tasks.tolist()})
                bar.set_postfix(loss=f"{loss_g:.4f}", pmax=f"{float(probs.max()):.2f}")
            done = step + 1
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                _save_checkpoint(ckpt_path, cfg, done, student, opt, stats, history, tokens_local,
                                 tokens_global, sampler, device, verifier_print, rank, world, dist)
            if cfg.stop_after is not None and done >= cfg.stop_after and done < cfg.steps:
                bar.close()
                return ScdfResult(cfg, None, history, {"stopped_after": done})
        bar.close()

        # --- finish: merge, fold, check the verifier
        if verifier_print != fingerprint(verifier):
            raise RuntimeError("the verifier's parameters changed during s-CDF; they must stay frozen")
        tau = float(student.log_tau.detach().exp())
        final = drafter
        if cfg.lora_rank:
            final = drafter.merge_and_unload()
        if cfg.method == "temperature":
            _fold_temperature(final, tau)
        final.eval().requires_grad_(False)

        report: dict[str, Any] = {
            "method": cfg.method, "config": cfg.to_dict(), "task_names": names, "world_size": world,
            "device": str(device), "steps": cfg.steps,
            "tokens_per_step": cfg.batch_size * cfg.context_length * world,
            "training_tokens": cfg.steps * cfg.batch_size * cfg.context_length * world,
            "probe_tokens": cfg.init_windows_per_task * m * cfg.context_length * world,
            "tokens_per_task": dict(zip(names, tokens_global.tolist())),
            "tokens_per_task_local": dict(zip(names, tokens_local.tolist())),
            "drafter_temperature": tau, "verifier_fingerprint": verifier_print,
            "verifier_unchanged": True, "cost_ratio": cost_ratio, "num_draft": cfg.num_draft,
            "history": history, "seconds": time.perf_counter() - t_start,
        }
        after = None
        if rank == 0:
            if cfg.evaluate:
                _ensure_eval_cache(ec, cfg, verifier, tokenizer, corpus, names, device)
                after = tf.evaluate(None, final, ec["windows"], temperature=cfg.temperature,
                                    batch_size=cfg.eval_batch_size, device=device, backend=cfg.backend,
                                    target_logits=ec["target_logits"])
                report["heldout"] = comparison_figures(before, after, cfg.num_draft, cost_ratio)
            d = out / "drafter"
            d.mkdir(parents=True, exist_ok=True)
            final.save_pretrained(d, safe_serialization=True)
            tokenizer.save_pretrained(d)
            _atomic_write_json(out / "scdf_report.json", report)
        return ScdfResult(cfg, final, history, report, before, after)
    finally:
        if launched:
            import torch.distributed as tdist

            tdist.barrier()
            tdist.destroy_process_group()


def _ensure_eval_cache(ec: dict, cfg: ScdfConfig, verifier, tokenizer, corpus, names, device):
    from . import teacher_forced as tf

    if "windows" not in ec:
        held = {t: corpus.tasks[t].heldout for t in names}
        if not any(held.values()):
            raise ScdfError("the corpus has no held-out text to evaluate on; raise heldout_fraction")
        ec["windows"] = tf.token_windows(tokenizer, held, cfg.context_length, cfg.eval_tokens_per_task)
    if "target_logits" not in ec:
        ec["target_logits"] = tf.verifier_logits(verifier, ec["windows"], batch_size=cfg.eval_batch_size,
                                                 device=device, progress=cfg.progress)


RESUME_FREE = ("resume", "stop_after", "progress", "evaluate", "log_every", "out_dir")


def _check_resume_config(saved: dict, cfg: ScdfConfig) -> None:
    now = cfg.to_dict()
    diff = sorted(k for k in now if k not in RESUME_FREE and saved.get(k) != now[k])
    if diff:
        raise ScdfError(f"--resume with a different config: {', '.join(diff)} differ from the checkpoint's")


def _save_checkpoint(path, cfg, step, student, opt, stats, history, tokens_local, tokens_global,
                     sampler, device, verifier_print, rank, world, dist):
    import torch

    rng = {"sampler": sampler.gen.get_state(), "torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    all_rng, all_tok = [rng], [tokens_local.clone()]
    if world > 1:
        all_rng = [None] * world
        all_tok = [None] * world
        dist.all_gather_object(all_rng, rng)
        dist.all_gather_object(all_tok, tokens_local.clone())
    if rank == 0:
        trainable = {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}
        ck = {"config": cfg.to_dict(), "step": step, "world_size": world, "student": trainable,
              "optimizer": opt.state_dict(), "stats": stats.state_dict(), "history": list(history),
              "tokens_local": all_tok, "tokens_global": tokens_global.clone(), "rng": all_rng,
              "verifier_fingerprint": verifier_print}
        _atomic_torch_save(ck, path)
    if world > 1:
        dist.barrier()


# ----------------------------------------------------------------------------- figures
def comparison_figures(before, after, num_draft: int, cost_ratio: float) -> dict:
    """Before/after held-out figures of one run (TeacherForcedResults on the same windows)."""
    from specfair_kernels.stats import speedup

    names = before.task_names
    sb, sa = before.summary(num_draft, cost_ratio), after.summary(num_draft, cost_ratio)

    def rel(a, b):
        return (a - b) / b if b else math.nan

    deltas = {t: after.alpha[t] - before.alpha[t] for t in names if after.alpha[t] is not None}
    worst = min(deltas, key=deltas.get)
    per_task = {t: {"alpha_before": before.alpha[t], "alpha_after": after.alpha[t],
                    "ce_before": before.ce[t], "ce_after": after.ce[t],
                    "kl_before": before.kl[t], "kl_after": after.kl[t],
                    "speedup_before": float(speedup(before.alpha[t], num_draft, cost_ratio)),
                    "speedup_after": float(speedup(after.alpha[t], num_draft, cost_ratio)),
                    "tokens": before.tokens[t]}
                for t in names if before.alpha[t] is not None}
    return {"before": sb, "after": sa,
            "alpha_variance_change": rel(sa["alpha_variance"], sb["alpha_variance"]),
            "U_ce_change": rel(sa["U_ce"], sb["U_ce"]), "U_kl_change": rel(sa["U_kl"], sb["U_kl"]),
            "mean_alpha_change": sa["mean_alpha"] - sb["mean_alpha"],
            "speedup_variance_change": rel(sa["speedup_variance"], sb["speedup_variance"]),
            "worst_task": worst, "worst_alpha_change": deltas[worst], "per_task": per_task}


# ----------------------------------------------------------------------------- CLI
def add_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``specfair scdf`` (also ``python -m specfair.scdf``; torchrun-able)."""
    d = ScdfConfig()
    ap.add_argument("--out", default=d.out_dir, help="output directory (default %(default)s)")
    ap.add_argument("--method", choices=METHODS, default=d.method,
                    help="scdf (default), or a baseline: uniform distillation, balanced data, "
                         "temperature tuning")
    ap.add_argument("--compare", action="store_true",
                    help="run every method (or --methods) under one budget and write a comparison "
                         "report (JSON, Markdown, PNG) in --out")
    ap.add_argument("--methods", default=",".join(METHODS), help="methods for --compare")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds for --compare (default 0)")
    ap.add_argument("--prefix", default="scdf_compare", help="--compare report file names (<out>/<prefix>.json/.md/.png)")
    ap.add_argument("--work-dir", help="--compare: where each run's drafter and checkpoint go "
                                       "(default <out>/<prefix>_runs)")
    ap.add_argument("--verifier", help="verifier path or id (default: the shipped pair)")
    ap.add_argument("--drafter", help="drafter path or id (default: the shipped pair)")
    ap.add_argument("--corpus", default=d.corpus_source, help="specfair.corpus source (default: %(default)s)")
    ap.add_argument("--corpus-option", action="append", default=[], metavar="KEY=VALUE",
                    help="corpus source option, e.g. path=data.jsonl")
    ap.add_argument("--tasks", help="comma-separated tasks (default: every task of the corpus)")
    ap.add_argument("--heldout-fraction", type=float, default=d.heldout_fraction)
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--batch-size", type=int, default=d.batch_size, help="windows per step per rank")
    ap.add_argument("--context-length", type=int, default=d.context_length)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    ap.add_argument("--loss", choices=LOSS_KINDS, default=d.loss, help="token_divergence kind of the loss")
    ap.add_argument("--weight-divergence", choices=LOSS_KINDS, default=d.weight_divergence,
                    help="divergence D_t the s-CDF weights come from (default kl)")
    ap.add_argument("--temperature", type=float, default=d.temperature)
    ap.add_argument("--uniform-mix", type=float, default=d.uniform_mix,
                    help="share of balanced sampling mixed into the s-CDF probabilities")
    ap.add_argument("--stats-decay", type=float, default=d.stats_decay)
    ap.add_argument("--lora-rank", type=int, default=d.lora_rank, help="0: full fine-tune (default)")
    ap.add_argument("--lora-alpha", type=float, default=d.lora_alpha)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    ap.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    ap.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--device", default=d.device, help="cpu (default), cuda, cuda:N or auto")
    ap.add_argument("--eval-tokens-per-task", type=int, default=d.eval_tokens_per_task)
    ap.add_argument("--num-draft", type=int, default=d.num_draft, help="K of the speed-up S(alpha; K, c)")
    ap.add_argument("--cost-ratio", type=float, help="c of S(alpha; K, c) (default: parameter ratio)")
    ap.add_argument("--no-eval", action="store_true", help="skip the held-out before/after evaluation")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def _parse_option(text: str):
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise ScdfError(f"expected KEY=VALUE, got {text!r}")
    return k, (int(v) if v.lstrip("-").isdigit() else v)


def config_from_args(a) -> ScdfConfig:
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()] if a.tasks else None
    return ScdfConfig(
        out_dir=a.out, method=a.method, verifier=a.verifier, drafter=a.drafter,
        corpus_source=a.corpus, corpus_options=dict(_parse_option(o) for o in a.corpus_option),
        tasks=tasks, heldout_fraction=a.heldout_fraction, steps=a.steps, batch_size=a.batch_size,
        context_length=a.context_length, lr=a.lr, warmup_steps=a.warmup_steps, loss=a.loss,
        weight_divergence=a.weight_divergence, temperature=a.temperature, uniform_mix=a.uniform_mix,
        stats_decay=a.stats_decay, lora_rank=a.lora_rank, lora_alpha=a.lora_alpha, seed=a.seed,
        checkpoint_every=a.checkpoint_every, resume=a.resume, stop_after=a.stop_after, device=a.device,
        eval_tokens_per_task=a.eval_tokens_per_task, num_draft=a.num_draft, cost_ratio=a.cost_ratio,
        evaluate=not a.no_eval, progress=not a.no_progress)


def main_from_args(a) -> int:
    """Run ``specfair scdf`` from parsed arguments; returns the exit status."""
    from .corpus import CorpusError, SourceNotAvailableError

    try:
        cfg = config_from_args(a)
        if a.compare:
            from .scdf_compare import run_comparison

            methods = [x.strip() for x in a.methods.split(",") if x.strip()]
            seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
            summary = run_comparison(cfg, methods=methods, seeds=seeds, prefix=a.prefix,
                                     work_dir=a.work_dir)
            print(summary["markdown_table"])
            print(f"report: {summary['paths']['json']}, {summary['paths']['markdown']}, {summary['paths']['png']}")
            return 0
        res = train(cfg)
    except (ScdfError, CorpusError, SourceNotAvailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if res.drafter is None:
        print(f"stopped after step {res.report.get('stopped_after')} (checkpoint in {cfg.out_dir})")
        return 0
    h = res.report.get("heldout")
    if h:
        print(_run_table(res.report))
    print(f"saved {Path(cfg.out_dir) / 'drafter'}; report {Path(cfg.out_dir) / 'scdf_report.json'}")
    return 0


def _run_table(report: dict) -> str:
    h = report["heldout"]
    lines = [f"{'task':<8} {'alpha before':>12} {'after':>7} {'CE before':>10} {'after':>7}"]
    for t, r in h["per_task"].items():
        lines.append(f"{t:<8} {r['alpha_before']:>12.4f} {r['alpha_after']:>7.4f} {r['ce_before']:>10.4f} "
                     f"{r['ce_after']:>7.4f}")
    b, a = h["before"], h["after"]
    lines.append(f"mean alpha {b['mean_alpha']:.4f} -> {a['mean_alpha']:.4f}; var alpha "
                 f"{b['alpha_variance']:.3e} -> {a['alpha_variance']:.3e} ({100 * h['alpha_variance_change']:+.1f}%); "
                 f"U_ce {b['U_ce']:.3e} -> {a['U_ce']:.3e} ({100 * h['U_ce_change']:+.1f}%); worst task "
                 f"{h['worst_task']} {100 * h['worst_alpha_change']:+.2f} points")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="specfair scdf", description="s-CDF: fine-tune the drafter where it "
                                 "is slowest (or a baseline), with the verifier frozen")
    add_arguments(ap)
    return main_from_args(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
