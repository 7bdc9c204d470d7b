"""s-CDF: stochastic corrective drafter fine-tuning, and the baselines it must beat.

Only the drafter learns.  The verifier is frozen (its parameters are fingerprinted at the
start and checked bit for bit at the end), so with lossless verification the output
distribution of speculative decoding does not change at all, only who gets it faster.

``train(ScdfConfig(...))`` runs one method for a fixed budget of optimiser steps, each
step ``batch_size`` windows of ``context_length`` tokens per rank (the same tokens and
steps for every method):

``uniform``      plain distillation: windows drawn uniformly from the pooled training
                 split of every task (a task's chance is its share of training tokens).
``balanced``     data balancing: each task equally likely (1/m), then a uniform window
                 (``balance_mix < 1`` mixes that share of 1/m with token-proportional
                 sampling: 0 is ``uniform``).
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

Data: the corpus is split three ways by a stable hash of each item's split key
(`specfair.corpus`): training text (the only text any method trains on), validation text
(``validation_fraction``, where `specfair.scdf_compare` chooses every method's knobs) and
held-out text (``heldout_fraction``, the only text reported).

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
  DistributedDataParallel (``shard="ddp"``, default) or sharded by FSDP2's ``fully_shard``
  per decoder layer (``shard="fsdp"``: parameters, gradients and optimiser state split over
  the ranks; `specfair.scdf_student`), gloo on the CPU, NCCL on CUDA; each rank draws its own
  windows from its own generator (seeded by seed and rank), and the per-task sums are
  all-reduced every step, so every rank holds the same D_t and the same sampling
  probabilities.  ``batch_size`` is per rank.  Rank 0 writes checkpoints and outputs.
* Checkpoints: ``<out_dir>/checkpoint.pt``, written to a temporary file in the same
  directory, fsync'd, then renamed over the old one, every ``checkpoint_every`` steps.
  It holds the config, the step, the trainable state, the optimiser, the running
  statistics, the history and every rank's random state.  ``resume=True`` continues from
  it and gives bitwise the same drafter as an uninterrupted run with the same seed.

* Objective: ``loss`` is any of `specfair.objectives` (kl, ce, tv, and the LK losses
  neg_log_alpha and kl_tv), per task with ``task_losses``.
* Throughput: each step is timed, and inside it the weight computation (per-task
  statistics of the loss pass, their all-reduce, the running average, the probabilities);
  ``scdf_report.json`` has ``throughput`` (tokens/s, mean step time, the weights' share).

Outputs in ``out_dir``: ``drafter/`` (``save_pretrained`` + tokenizer), ``scdf_report.json``
(config, history of losses, D_t and sampling probabilities, throughput, before/after
held-out figures when ``evaluate``), and the checkpoint.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import specfair_kernels as sk

from . import distributed, objectives
from . import scdf_student as student_mod
from ._util import atomic_write, resolve_device, write_json
from .scdf_eval import evaluate_drafter, load_models, load_task_corpus, prepare_eval_cache
from .spread import before_after
from .teacher_forced import token_streams
from .training import WindowSampler, decay_groups, fingerprint, lr_at

__all__ = ["ScdfConfig", "ScdfError", "ScdfResult", "evaluate_drafter", "load_models", "load_task_corpus",
           "prepare_eval_cache", "train"]

from .scdf_config import (
    LORA_TARGETS,
    RESUME_FREE,
    RunningDivergence,
    ScdfConfig,
    ScdfError,
    ScdfResult,
    task_probabilities,
)


def train(config: ScdfConfig, *, verifier=None, drafter=None, tokenizer=None, corpus=None,
          eval_cache: dict | None = None) -> ScdfResult:
    """Fine-tune the drafter with ``config.method`` (see the module docstring).

    The models, tokenizer and corpus may be passed in (already loaded); otherwise they
    are loaded from ``config.verifier`` / ``config.drafter`` (default: the shipped pair)
    and ``config.corpus_source``.  A passed-in ``drafter`` is trained in place.
    ``eval_cache`` (a dict, filled on first use) lets several runs share the held-out
    windows and the verifier's held-out logits.
    """
    cfg = config
    cfg.validate()
    device = resolve_device(cfg.device, ScdfError)
    launched = distributed.init_from_env(device)
    try:
        run = _Run(cfg, device, eval_cache if eval_cache is not None else {})
        run.setup(verifier, drafter, tokenizer, corpus)
        if not run.resume():
            run.seed_estimates()
        if not run.loop():
            return ScdfResult(cfg, None, run.history, {"stopped_after": run.done})
        return run.finish()
    finally:
        if launched:
            distributed.shutdown()


class _Run:
    """The state of one `train` call, step to step."""

    def __init__(self, cfg: ScdfConfig, device: torch.device, eval_cache: dict):
        self.cfg, self.ec = cfg, eval_cache
        self.rank, self.world = distributed.rank_and_world()
        if device.type == "cuda" and self.world > 1:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.out = Path(cfg.out_dir)
        self.ckpt_path = self.out / "checkpoint.pt"
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        self.t_start = time.perf_counter()
        self.use_amp = device.type == "cuda" and cfg.bf16_autocast_on_cuda
        self.history: list[dict] = []
        self.start_step = self.done = 0
        self.before = None
        self.weight_seconds = self.step_seconds = 0.0     # throughput: the timed steps of this process
        self.steps_timed = 0
        self.objective_info: dict = {}

    # --- set-up -------------------------------------------------------------------------------
    def setup(self, verifier, drafter, tokenizer, corpus) -> None:
        cfg, device = self.cfg, self.device
        if verifier is None or drafter is None or tokenizer is None:
            v, d, tk = load_models(cfg)
            verifier, drafter, tokenizer = verifier or v, drafter or d, tokenizer or tk
        if corpus is None:
            corpus = load_task_corpus(cfg)
        self.names = [t for t in corpus.task_names if corpus.tasks[t].train]
        if len(self.names) < 2:
            raise ScdfError(f"s-CDF needs at least 2 tasks with training text, got {self.names}")
        self.m = len(self.names)
        streams = token_streams(tokenizer, {t: corpus.tasks[t].train for t in self.names})
        self.train_tokens = torch.tensor([len(streams[t]) for t in self.names], dtype=torch.float64)
        self.verifier, self.tokenizer, self.corpus = verifier, tokenizer, corpus
        verifier.to(device).eval().requires_grad_(False)
        self.verifier_print = fingerprint(verifier)
        drafter.to(device)
        n_ver = sum(p.numel() for p in verifier.parameters())
        n_dra = sum(p.numel() for p in drafter.parameters())
        self.cost_ratio = cfg.cost_ratio if cfg.cost_ratio is not None else n_dra / n_ver
        if cfg.evaluate and self.rank == 0:
            prepare_eval_cache(self.ec, cfg, verifier, tokenizer, corpus, self.names, device)
            if self.ec.get("before") is None:
                self.ec["before"] = self.evaluate(drafter)
            self.before = self.ec["before"]
        self.drafter = self._trainable(drafter)
        self.student = student_mod.Student(self.drafter, cfg.method).to(device)
        # sharding (FSDP) replaces the parameters, so the optimiser is built after it
        self.model = student_mod.wrap(self.student, cfg.shard, device, self.world)
        self.trainable = [p for p in self.student.parameters() if p.requires_grad]
        if cfg.method == "temperature":
            groups = [{"params": [self.student.log_tau], "weight_decay": 0.0, "base_lr": cfg.temperature_lr}]
        else:
            groups = decay_groups(self.trainable, cfg.weight_decay, base_lr=cfg.lr)
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8)
        self.sampler = WindowSampler([streams[t] for t in self.names], cfg.context_length,
                                     seed=cfg.seed * 7919 + self.rank, names=self.names, error=ScdfError)
        unknown = sorted(set(cfg.task_losses) - set(self.names))
        if unknown:
            raise ScdfError(f"task_losses names task(s) {unknown} that have no training text; tasks: {self.names}")
        self.task_objectives = {self.names.index(t): k for t, k in cfg.task_losses.items()}
        self.stats = RunningDivergence(self.m, cfg.stats_decay)
        self.tokens_local = torch.zeros(self.m, dtype=torch.float64)
        self.tokens_global = torch.zeros(self.m, dtype=torch.float64)

    def _trainable(self, drafter):
        """The drafter with its trainable parameters switched on (LoRA adapters with lora_rank)."""
        cfg = self.cfg
        if cfg.lora_rank:
            from peft import LoraConfig, get_peft_model

            present = {n.rsplit(".", 1)[-1] for n, _ in drafter.named_modules()}
            targets = [t for t in LORA_TARGETS if t in present]
            if not targets:
                raise ScdfError(f"LoRA: the drafter has none of the modules {LORA_TARGETS}")
            torch.manual_seed(cfg.seed)
            drafter = get_peft_model(drafter, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                                         lora_dropout=cfg.lora_dropout, target_modules=targets))
        else:
            drafter.requires_grad_(cfg.method != "temperature")
        drafter.train()
        return drafter

    def evaluate(self, drafter):
        return evaluate_drafter(self.cfg, drafter, self.ec, self.device)

    # --- the loss pass ----------------------------------------------------------------------------
    def divergences(self, x, y_mask, task_rows, with_grad):
        """Loss pass on a batch: (loss, per-task sums [m, 2] of the weight divergence and alpha,
        per-task tokens [m]).  The per-task statistics (the weights' input) are timed into
        ``self.weight_seconds``."""
        cfg, device = self.cfg, self.device
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            lp = self.verifier(input_ids=x, use_cache=False).logits
        with torch.enable_grad() if with_grad else torch.no_grad():
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                lq = self.model(x)
            vals, self.objective_info = objectives.per_token(
                lq, lp, cfg.loss, temperature=cfg.temperature, mask=y_mask, backend=cfg.backend, eta=cfg.lk_eta,
                task_rows=task_rows, task_objectives=self.task_objectives)
            loss = vals.sum() / y_mask.sum().clamp_min(1)
        t0 = self._clock()
        with torch.no_grad():
            def kind(k):
                if k == cfg.loss and not self.task_objectives:
                    return vals.detach()
                return sk.token_divergence(lq.detach(), lp, kind=k, temperature=cfg.temperature,
                                           reduction="none", mask=y_mask, backend=cfg.backend)

            wv, av = kind(cfg.weight_divergence), kind("alpha")
            t = task_rows[:, None].expand_as(y_mask)[y_mask]
            sums = torch.zeros(self.m, 2, dtype=torch.float64, device=device)
            sums[:, 0].index_add_(0, t, wv[y_mask].double())
            sums[:, 1].index_add_(0, t, av[y_mask].double())
            toks = torch.zeros(self.m, dtype=torch.float64, device=device).index_add_(
                0, t, torch.ones_like(t, dtype=torch.float64))
            sums, toks = sums.cpu(), toks.cpu()
        self.weight_seconds += self._clock() - t0
        return loss, sums, toks

    def _clock(self) -> float:
        """perf_counter after the device's queued work (CUDA), so a timed span holds its kernels."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def reduce(self, x):
        return distributed.all_reduce_sum(x, self.device)

    # --- resume or seed -----------------------------------------------------------------------------
    def resume(self) -> bool:
        """Continue from the checkpoint when asked and present; False otherwise."""
        cfg = self.cfg
        if not (cfg.resume and self.ckpt_path.is_file()):
            return False
        ck = torch.load(self.ckpt_path, map_location="cpu", weights_only=False)
        diff = sorted(k for k, v in cfg.to_dict().items() if k not in RESUME_FREE and ck["config"].get(k) != v)
        if diff:
            raise ScdfError(f"--resume with a different config: {', '.join(diff)} differ from the checkpoint's")
        if ck["world_size"] != self.world:
            raise ScdfError(f"checkpoint was written by {ck['world_size']} ranks, this run has {self.world}")
        if ck["verifier_fingerprint"] != self.verifier_print:
            raise ScdfError("the checkpoint was made with another verifier")
        student_mod.load_full_state(self.student, self.opt, ck["student"], ck["optimizer"], self.device)
        self.stats.load_state_dict(ck["stats"])
        self.history = ck["history"]
        self.start_step = ck["step"]
        self.tokens_local = ck["tokens_local"][self.rank].clone()
        self.tokens_global = ck["tokens_global"].clone()
        r = ck["rng"][self.rank]
        self.sampler.gen.set_state(r["sampler"])
        torch.set_rng_state(r["torch"])
        if self.device.type == "cuda" and r.get("cuda") is not None:
            torch.cuda.set_rng_state(r["cuda"], self.device)
        return True

    def seed_estimates(self) -> None:
        """D_t before step 0, from ``init_windows_per_task`` training windows per task (no gradient)."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.seed * 7919 + 104729 + self.rank)
        probe = [(self.sampler.window(ti, g), ti) for ti in range(self.m) for _ in range(cfg.init_windows_per_task)]
        if not probe:
            return
        X = torch.stack([w for w, _ in probe])
        Tt = torch.tensor([t for _, t in probe])
        sums = torch.zeros(self.m, 2, dtype=torch.float64)
        toks = torch.zeros(self.m, dtype=torch.float64)
        self.student.eval()
        for i in range(0, len(X), cfg.batch_size):
            xb = X[i:i + cfg.batch_size].to(self.device)
            _, s_, n_ = self.divergences(xb[:, :-1], torch.ones_like(xb[:, 1:], dtype=torch.bool),
                                         Tt[i:i + cfg.batch_size].to(self.device), False)
            sums += s_
            toks += n_
        self.student.train()
        self.stats.update(self.reduce(sums), self.reduce(toks))

    # --- the loop -------------------------------------------------------------------------------------
    def loop(self) -> bool:
        """Train to ``cfg.steps``; False when ``stop_after`` stopped it first (a simulated kill)."""
        cfg = self.cfg
        bar = tqdm(range(self.start_step, cfg.steps), desc=f"s-CDF [{cfg.method}]", initial=self.start_step,
                   total=cfg.steps, disable=not (cfg.progress and self.rank == 0), dynamic_ncols=True)
        self.weight_seconds = 0.0          # the seeding probe before step 0 is not a step
        for step in bar:
            t_step = tw = self._clock()
            est = self.stats.mean()
            probs = task_probabilities(cfg.method, est[:, 0], self.train_tokens, cfg.uniform_mix, cfg.balance_mix)
            self.weight_seconds += time.perf_counter() - tw
            for gr in self.opt.param_groups:
                gr["lr"] = lr_at(step, gr["base_lr"], cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
            batch, tasks = self.sampler.sample(probs, cfg.batch_size)
            batch = batch.to(self.device)
            mask = torch.ones_like(batch[:, 1:], dtype=torch.bool)
            loss, sums, toks = self.divergences(batch[:, :-1], mask, tasks.to(self.device), True)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip)
            gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm    # a DTensor under FSDP
            self.opt.step()
            self.tokens_local += toks
            tw = time.perf_counter()
            sums_g, toks_g = self.reduce(sums), self.reduce(toks)
            self.tokens_global += toks_g
            self.stats.update(sums_g, toks_g)
            now = self._clock()
            self.weight_seconds += now - tw
            self.step_seconds += now - t_step
            self.steps_timed += 1
            loss_g = float(self.reduce(loss.detach().double().cpu().reshape(1)) / self.world)
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                # the estimates this step sampled by (before its own batch was folded in)
                self.history.append({
                    "step": step, "loss": loss_g, "lr": self.opt.param_groups[0]["lr"], "grad_norm": float(gnorm),
                    "tau": float(self.student.log_tau.detach().exp()), **self.objective_info,
                    "divergence": est[:, 0].tolist(), "alpha": est[:, 1].tolist(),
                    "probabilities": probs.tolist(), "batch_tasks": tasks.tolist()})
                bar.set_postfix(loss=f"{loss_g:.4f}", pmax=f"{float(probs.max()):.2f}")
            self.done = step + 1
            if self.done % cfg.checkpoint_every == 0 or self.done == cfg.steps:
                self.save_checkpoint()
            if cfg.stop_after is not None and self.done >= cfg.stop_after and self.done < cfg.steps:
                bar.close()
                return False
        bar.close()
        return True

    def save_checkpoint(self) -> None:
        """Everything a bitwise resume needs (every rank's random state included); rank 0 writes."""
        dev = self.device
        rng = {"sampler": self.sampler.gen.get_state(), "torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}
        all_rng = distributed.gather_objects(rng)
        all_tok = distributed.gather_objects(self.tokens_local.clone())
        trainable, opt_state = student_mod.full_state(self.student, self.opt)   # a collective under FSDP
        if self.rank == 0:
            ck = {"config": self.cfg.to_dict(), "step": self.done, "world_size": self.world, "student": trainable,
                  "optimizer": opt_state, "stats": self.stats.state_dict(), "history": list(self.history),
                  "tokens_local": all_tok, "tokens_global": self.tokens_global.clone(), "rng": all_rng,
                  "verifier_fingerprint": self.verifier_print}
            atomic_write(self.ckpt_path, lambda f: torch.save(ck, f), binary=True)
        distributed.barrier()

    def throughput(self, tokens_per_step: int) -> dict:
        """Training speed of the steps this process ran (not those before a resume): tokens/s of
        the whole job (every rank's tokens over this rank's step time), mean step time, and the
        share of it spent on the s-CDF weights: the per-task statistics of the loss pass (extra
        divergence kinds, per-task sums), their all-reduce, the running average and the sampling
        probabilities.  Checkpoints, logging and evaluation are outside the steps."""
        n, sec = self.steps_timed, self.step_seconds
        return {"steps_timed": n, "step_seconds_total": sec, "step_seconds_mean": sec / n if n else None,
                "tokens_per_second": n * tokens_per_step / sec if sec > 0 else None,
                "weight_seconds_total": self.weight_seconds,
                "weight_fraction": self.weight_seconds / sec if sec > 0 else None}

    # --- the end --------------------------------------------------------------------------------------
    def finish(self) -> ScdfResult:
        """Check the verifier, merge LoRA, fold tau; rank 0 evaluates and writes the outputs."""
        cfg = self.cfg
        if self.verifier_print != fingerprint(self.verifier):
            raise RuntimeError("the verifier's parameters changed during s-CDF; they must stay frozen")
        tau = float(self.student.log_tau.detach().exp())
        if cfg.lora_rank:
            final = self.drafter.merge_and_unload()
        else:      # sharded: gathered on rank 0 (a collective), None elsewhere
            final = student_mod.plain_drafter(self.student, student_mod.full_state(self.student, self.opt)[0]
                                              if self.world > 1 and cfg.shard == "fsdp" else None)
        if final is not None:
            if cfg.method == "temperature":
                student_mod.fold_temperature(final, tau, ScdfError)
            final.eval().requires_grad_(False)
        tokens_per_step = cfg.batch_size * cfg.context_length * self.world
        report: dict[str, Any] = {
            "method": cfg.method, "config": cfg.to_dict(), "task_names": self.names, "world_size": self.world,
            "device": str(self.device), "shard": cfg.shard if self.world > 1 else None, "steps": cfg.steps,
            "tokens_per_step": tokens_per_step, "rank0_parameter_elements": student_mod.local_elements(self.student),
            "training_tokens": cfg.steps * tokens_per_step,
            "probe_tokens": cfg.init_windows_per_task * self.m * cfg.context_length * self.world,
            "tokens_per_task": dict(zip(self.names, self.tokens_global.tolist())),
            "tokens_per_task_local": dict(zip(self.names, self.tokens_local.tolist())),
            "drafter_temperature": tau, "verifier_fingerprint": self.verifier_print,
            "verifier_unchanged": True, "cost_ratio": self.cost_ratio, "num_draft": cfg.num_draft,
            "history": self.history, "seconds": time.perf_counter() - self.t_start,
            "throughput": self.throughput(tokens_per_step),
        }
        after = None
        if self.rank == 0:
            if cfg.evaluate:
                prepare_eval_cache(self.ec, cfg, self.verifier, self.tokenizer, self.corpus, self.names, self.device)
                after = self.evaluate(final)
                report["heldout"] = before_after(self.before, after, cfg.num_draft, self.cost_ratio)
            d = self.out / "drafter"
            d.mkdir(parents=True, exist_ok=True)
            final.save_pretrained(d, safe_serialization=True)
            self.tokenizer.save_pretrained(d)
            write_json(self.out / "scdf_report.json", report)
        return ScdfResult(cfg, final, self.history, report, self.before, after)
