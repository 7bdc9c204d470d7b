"""`specfair audit`: who gets how much speed-up from speculative decoding, why, and how
unfair it is (issue 6).

Two measurements per task (by default a language), on the corpus's **held-out** split:

* **teacher-forced**: one forward pass of each model over held-out text, and at every
  position alpha = sum min(p, q), KL(p||q), CE(p, q) and H(p) at the audit's temperature
  (``specfair.teacher_forced``, through ``specfair_kernels.token_divergence``).  Cheap and
  low-variance: it is what the unfairness figures and the correlations use.
* **generative**: real speculative generation with ``SpeculativeGenerator`` from prompts
  cut from held-out paragraphs (the same paragraphs in every language where the corpus is
  parallel): realised acceptance, tokens per verifier call, the *measured* wall-clock
  speed-up against verifier-only generation of the same outputs, and the model-based one,
  S(alpha; K, c) with the measured cost ratio c.

Statistics (documented choices):

* Unfairness: U_ce = population variance of per-task mean CE (the paper's 𝒰), U_kl the
  same for KL (which tracks acceptance better, see PAPER.md), and variance and max/min
  ratio of per-task acceptance and of speed-up (predicted and measured).
* Confidence intervals are 95% percentile bootstraps (``bootstrap`` resamples, seeded).
  Per-task figures and the unfairness figures resample the held-out *windows* within each
  task (the tasks are fixed; the noise is in their estimates).  Correlations across tasks
  (Spearman) resample the *tasks*, since they describe a population of tasks.
* The bound drawn in the divergence plot is PAPER.md's: Pinsker + Jensen give
  alpha_T >= 1 - sqrt(KL_T / 2), and S is increasing in alpha, so
  S_T >= S(max(0, 1 - sqrt(KL_T / 2)); K, c).

Output (``out`` directory; every file is written to a temporary directory first and moved
into place only when all of them are complete): ``audit.json`` (every figure, the full
configuration and versions), ``audit.csv`` (one row per task), ``audit.md``,
``acceptance_speedup.png`` and ``divergence_speedup.png``.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ._common import plain_backend, resolve_device

__all__ = ["AuditConfig", "AuditReport", "AuditError", "run", "speedup_lower_bound"]


class AuditError(ValueError):
    """Bad audit input (unknown task, unusable device or output directory, ...)."""


@dataclass
class AuditConfig:
    """Everything that determines an audit (saved in ``audit.json``)."""

    drafter: str | None = None          # name, directory or GGUF file; None: the shipped pair
    verifier: str | None = None
    gguf_file: str | None = None        # with a hub name/directory holding GGUF files
    corpus: str = "default"             # a specfair.corpus source
    corpus_options: dict = field(default_factory=dict)
    tasks: list[str] | None = None      # None: every task of the corpus
    heldout_fraction: float = 0.1
    split_seed: int = 0
    # teacher-forced
    context_length: int = 256
    teacher_forced_tokens: int = 4096   # held-out tokens per task (at most)
    # generative
    num_prompts: int = 8                # prompts per task
    prompt_tokens: int = 24             # tokens of each held-out paragraph used as a prompt
    max_new_tokens: int = 32
    num_draft: int | str = 4            # K, or "auto"
    temperature: float = 1.0
    generative: bool = True
    timing_repeats: int = 2             # interleaved repeats per task; times are their medians
    # prompts per generate call; 1 (default) times every request alone, the latency a user
    # feels, so a task's speed-up follows its own acceptance, not its slowest row's; None:
    # all of a task's prompts in one batch
    generation_batch_size: int | None = 1
    # common
    device: str = "cpu"
    dtype: str | None = None            # None: the models' own (float32 on the CPU)
    batch_size: int = 16
    seed: int = 0
    bootstrap: int = 1000
    out: str | None = "specfair-audit"
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        def pos_int(name):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise AuditError(f"{name} must be a positive integer, got {v!r}")

        for name in ("context_length", "teacher_forced_tokens", "num_prompts", "prompt_tokens",
                     "max_new_tokens", "batch_size", "bootstrap", "timing_repeats"):
            pos_int(name)
        if self.generation_batch_size is not None:
            pos_int("generation_batch_size")
        if self.num_draft != "auto":
            pos_int("num_draft")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise AuditError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if (self.drafter is None) != (self.verifier is None):
            raise AuditError("give both drafter and verifier, or neither (the shipped default pair)")
        if self.prompt_tokens >= self.context_length:
            raise AuditError(f"prompt_tokens ({self.prompt_tokens}) must be below context_length "
                             f"({self.context_length})")


# ---------------------------------------------------------------------------- statistics
def speedup_lower_bound(kl, num_draft: int, cost_ratio: float):
    """PAPER.md's bound: S >= S(max(0, 1 - sqrt(KL / 2)); K, c), elementwise on numpy."""
    import numpy as np

    a = np.clip(1.0 - np.sqrt(np.asarray(kl, dtype=np.float64) / 2.0), 0.0, 1.0)
    return _speedup_array(a, num_draft, cost_ratio)


def _speedup_array(alpha, num_draft: int, cost_ratio: float):
    """S(alpha; K, c) elementwise on a numpy array (NaN stays NaN), through the tensor path
    of ``specfair_kernels.stats.speedup``."""
    import numpy as np
    import torch

    from specfair_kernels.stats import speedup

    return speedup(torch.from_numpy(np.asarray(alpha, dtype=np.float64)), num_draft, cost_ratio).numpy()


def _spearman(x, y) -> float:
    import numpy as np
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return math.nan
    return float(spearmanr(x[ok], y[ok]).statistic)


def _ci(samples) -> list[float]:
    import numpy as np

    s = np.asarray(samples, float)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return [math.nan, math.nan]
    return [float(np.percentile(s, 2.5)), float(np.percentile(s, 97.5))]


def _pvar(v) -> float:
    import numpy as np

    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    return float(np.mean((v - v.mean()) ** 2)) if v.size else math.nan


def _ratio(v) -> float:
    import numpy as np

    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    return float(v.max() / v.min()) if v.size and v.min() > 0 else math.nan


# ---------------------------------------------------------------------------- the report
@dataclass
class AuditReport:
    """The audit's result: ``tasks`` (one dict per task), ``summary`` (unfairness,
    correlations with intervals, fastest/slowest), ``config``, ``environment``.
    ``files`` lists what was written (empty when ``out`` was None)."""

    tasks: list[dict]
    summary: dict
    config: dict
    environment: dict
    files: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"schema": "specfair.audit/1", "summary": self.summary, "tasks": self.tasks,
                "config": self.config, "environment": self.environment}

    def task(self, name: str) -> dict:
        for t in self.tasks:
            if t["task"] == name:
                return t
        raise KeyError(name)

    # -- renderings
    def table(self) -> str:
        """The terminal table (plain text)."""
        gen = any(t.get("measured_speedup") is not None for t in self.tasks)
        cols = ["task", "alpha", "KL", "CE", "H(p)", "S pred"]
        if gen:
            cols += ["acc gen", "tok/step", "S meas"]
        rows = []
        for t in sorted(self.tasks, key=lambda t: -_num(t.get("measured_speedup", t["predicted_speedup"]))):
            r = [t["task"], _f(t["alpha"]), _f(t["kl"]), _f(t["ce"]), _f(t["entropy"]),
                 _f(t["predicted_speedup"], 2)]
            if gen:
                r += [_f(t.get("realised_acceptance")), _f(t.get("tokens_per_step"), 2),
                      _f(t.get("measured_speedup"), 2)]
            rows.append(r)
        w = [max(len(str(x)) for x in [c] + [r[i] for r in rows]) for i, c in enumerate(cols)]
        line = lambda r: "  ".join(str(x).rjust(w[i]) if i else str(x).ljust(w[i])  # noqa: E731
                                   for i, x in enumerate(r))
        out = [line(cols), line(["-" * n for n in w])] + [line(r) for r in rows]
        s = self.summary
        out.append("")
        out.append(f"fastest: {s['fastest_task']}  slowest: {s['slowest_task']}  "
                   f"disparity (fastest/slowest {s['speedup_basis']} speed-up): {_f(s['disparity_ratio'], 2)}")
        u = s["unfairness"]
        out.append(f"U_ce = {_f(u['U_ce']['value'], 4)} {_fci(u['U_ce']['ci95'], 4)}   "
                   f"U_kl = {_f(u['U_kl']['value'], 4)} {_fci(u['U_kl']['ci95'], 4)}   "
                   f"var(alpha) = {_f(u['alpha_variance']['value'], 5)} {_fci(u['alpha_variance']['ci95'], 5)}")
        for name, c in s["correlations"].items():
            out.append(f"Spearman {name}: {_f(c['rho'], 2)} {_fci(c['ci95'], 2)}")
        return "\n".join(out)

    def markdown(self) -> str:
        s, u = self.summary, self.summary["unfairness"]
        cfg = self.config
        gen = any(t.get("measured_speedup") is not None for t in self.tasks)
        L = ["# Speculative decoding fairness audit", ""]
        L.append(f"Drafter `{cfg['drafter_resolved']}`, verifier `{cfg['verifier_resolved']}`; corpus "
                 f"`{cfg['corpus']}` ({len(self.tasks)} tasks, held-out split); K = {cfg['num_draft']}, "
                 f"temperature {cfg['temperature']}, device {self.environment['device']}.")
        L.append("")
        L.append(f"**Fastest task: {s['fastest_task']}. Slowest: {s['slowest_task']}.** Disparity "
                 f"(fastest ÷ slowest {s['speedup_basis']} speed-up): **{_f(s['disparity_ratio'], 2)}×**.")
        L.append("")
        L.append("| figure | value | 95% CI |")
        L.append("|---|---|---|")
        for key, label in (("U_ce", "𝒰 = variance of per-task CE"), ("U_kl", "variance of per-task KL"),
                           ("alpha_variance", "variance of per-task α"),
                           ("alpha_max_min_ratio", "max/min per-task α"),
                           ("predicted_speedup_variance", "variance of predicted speed-up"),
                           ("predicted_speedup_max_min_ratio", "max/min predicted speed-up"),
                           ("measured_speedup_variance", "variance of measured speed-up"),
                           ("measured_speedup_max_min_ratio", "max/min measured speed-up")):
            if key in u:
                L.append(f"| {label} | {_f(u[key]['value'], 5)} | {_fci(u[key]['ci95'], 5)} |")
        for name, c in s["correlations"].items():
            L.append(f"| Spearman {name} | {_f(c['rho'], 3)} | {_fci(c['ci95'], 3)} |")
        L.append("")
        head = "| task | α | α 95% CI | KL | CE | H(p) | predicted S |"
        sep = "|---|---|---|---|---|---|---|"
        if gen:
            head += " realised acceptance | tokens/step | measured S |"
            sep += "---|---|---|"
        L += [head, sep]
        for t in self.tasks:
            r = (f"| {t['task']} | {_f(t['alpha'])} | {_fci(t['alpha_ci95'])} | {_f(t['kl'])} | {_f(t['ce'])} | "
                 f"{_f(t['entropy'])} | {_f(t['predicted_speedup'], 2)} |")
            if gen:
                r += (f" {_f(t.get('realised_acceptance'))} | {_f(t.get('tokens_per_step'), 2)} | "
                      f"{_f(t.get('measured_speedup'), 2)} |")
            L.append(r)
        L.append("")
        L.append(f"Teacher-forced figures over up to {cfg['teacher_forced_tokens']} held-out tokens per task; "
                 f"cost ratio c = {_f(s['cost_ratio'], 3)} ({s['cost_ratio_source']}). "
                 "Plots: `acceptance_speedup.png`, `divergence_speedup.png`. Every figure: `audit.json`.")
        return "\n".join(L) + "\n"

    def csv(self) -> str:
        keys = list(dict.fromkeys(k for t in self.tasks for k in t if not isinstance(t[k], (list, dict))))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        for t in self.tasks:
            w.writerow({k: t.get(k) for k in keys})
        return buf.getvalue()


def _num(v) -> float:
    return -math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _f(v, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{nd}f}"


def _fci(ci, nd: int = 3) -> str:
    if not ci or any(c is None or not math.isfinite(c) for c in ci):
        return "n/a"
    return f"[{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]"


# ---------------------------------------------------------------------------- checks
def _check_out(out: str | os.PathLike) -> Path:
    """Fail before any work if ``out`` cannot be created or written."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise AuditError(f"--out {str(p)!r} exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=p, prefix=".specfair-probe-", delete=True)
        probe.close()
    except OSError as e:
        raise AuditError(f"cannot write the output directory {str(p)!r}: {e.strerror or e}") from None
    return p


# ---------------------------------------------------------------------------- measurements
def _load_models(cfg: AuditConfig, device):
    import specfair
    from specfair.generator import load_pair

    if cfg.verifier is None:
        drafter, verifier = str(specfair.default_pair_path("drafter")), str(specfair.default_pair_path("verifier"))
    else:
        drafter, verifier = cfg.drafter, cfg.verifier
    kw = {"device": str(device)}
    if cfg.dtype is not None:
        kw["dtype"] = cfg.dtype
    if cfg.gguf_file is not None:
        kw["drafter_gguf_file"] = kw["verifier_gguf_file"] = cfg.gguf_file
    try:
        d, v, tok = load_pair(drafter, verifier, **kw)
    except (OSError, ValueError) as e:
        raise AuditError(f"could not load the pair: {e}") from None
    d.eval()
    v.eval()
    return d, v, tok, drafter, verifier


def _prompts(tok, corpus, tasks: Sequence[str], n: int, prompt_tokens: int):
    """Per task, up to n prompts: <s> + the first prompt_tokens tokens of held-out paragraphs
    long enough to have them (in held-out order, which is parallel across languages)."""
    backend = plain_backend(tok)
    bos = tok.bos_token_id
    out = {}
    for t in tasks:
        paras = corpus.tasks[t].heldout
        ids = []
        for enc in backend.encode_batch(list(paras), add_special_tokens=False):
            if len(enc.ids) >= prompt_tokens:
                ids.append(([bos] if bos is not None else []) + enc.ids[:prompt_tokens])
            if len(ids) == n:
                break
        if not ids:
            raise AuditError(f"task {t!r} has no held-out paragraph of {prompt_tokens} tokens; "
                             "lower --prompt-tokens")
        out[t] = ids
    return out


def _bootstrap_within(per_window: dict, tasks: list[str], B: int, rng):
    """Resample windows within each task: per-task means of alpha/kl/ce for B resamples
    (arrays [B, T])."""
    import numpy as np

    T = len(tasks)
    res = {k: np.full((B, T), np.nan) for k in ("alpha", "kl", "ce")}
    task = np.asarray(per_window["task"])
    tokens = np.asarray(per_window["tokens"], float)
    for ti in range(T):
        idx = np.flatnonzero(task == ti)
        if idx.size == 0:
            continue
        draw = idx[rng.integers(0, idx.size, size=(B, idx.size))]
        n = tokens[draw].sum(1)
        for k in res:
            s = np.asarray(per_window[f"{k}_sum"], float)
            res[k][:, ti] = s[draw].sum(1) / np.where(n > 0, n, np.nan)
    return res


def run(config: AuditConfig | None = None, **overrides) -> AuditReport:
    """Run the audit (see the module docstring) and, unless ``config.out`` is None, write
    its files.  Keyword arguments override fields of ``config`` (or of the defaults)."""
    import numpy as np

    from specfair import corpus as corpus_mod
    from specfair import teacher_forced as tf
    from specfair_kernels.stats import speedup

    cfg = dataclasses.replace(config or AuditConfig(), **overrides)
    cfg.validate()
    device = resolve_device(cfg.device, AuditError)
    out_dir = _check_out(cfg.out) if cfg.out is not None else None
    t0 = time.perf_counter()
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if cfg.progress else (lambda *a: None)

    say("loading corpus ...")
    try:
        corpus = corpus_mod.load_corpus(cfg.corpus, tasks=cfg.tasks, heldout_fraction=cfg.heldout_fraction,
                                        seed=cfg.split_seed, **cfg.corpus_options)
    except corpus_mod.CorpusError as e:
        raise AuditError(str(e)) from None
    tasks = [t for t in corpus.task_names if corpus.tasks[t].heldout]
    if not tasks:
        raise AuditError("no task has held-out text; raise heldout_fraction")
    say("loading models ...")
    drafter, verifier, tok, dname, vname = _load_models(cfg, device)

    # --- teacher-forced
    say(f"teacher-forced pass over {len(tasks)} tasks ...")
    windows = tf.token_windows(tok, {t: corpus.tasks[t].heldout for t in tasks},
                               context_length=cfg.context_length, max_tokens_per_task=cfg.teacher_forced_tokens)
    # At temperature 0 (greedy) the divergences are taken at T = 1: a property of the pair.
    tf_temperature = cfg.temperature if cfg.temperature > 0 else 1.0
    tfr = tf.evaluate(verifier, drafter, windows, temperature=tf_temperature,
                      batch_size=cfg.batch_size, device=device, progress=cfg.progress)

    # --- generative
    gen = None
    K = cfg.num_draft
    if cfg.generative:
        from specfair.generator import SpeculativeGenerator, measure_speedup

        say("speculative generation, then verifier-only generation of the same outputs ...")
        prompts = _prompts(tok, corpus, tasks, cfg.num_prompts, cfg.prompt_tokens)
        generator = SpeculativeGenerator(drafter, verifier, num_draft=K, temperature=cfg.temperature,
                                         pad_token_id=tok.pad_token_id)
        # lists of token lists: measure_speedup left-pads them itself
        gen = measure_speedup(generator, [p for t in tasks for p in prompts[t]], None,
                              task_ids=[i for i, t in enumerate(tasks) for _ in prompts[t]],
                              num_tasks=len(tasks), max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                              eos_token_id=None, repeats=cfg.timing_repeats, progress=cfg.progress,
                              batch_size=cfg.generation_batch_size)

    # --- per-task rows
    if gen:
        c = gen["cost_ratio"]
    else:
        from specfair.generator import measure_cost_ratio

        c = measure_cost_ratio(drafter, verifier)
    k_pred = K if isinstance(K, int) else 4     # "auto": the prediction is shown at K = 4
    rows = []
    for i, t in enumerate(tasks):
        a = tfr.alpha[t]
        r = {"task": t, "heldout_tokens": tfr.tokens[t], "alpha": a, "kl": tfr.kl[t], "ce": tfr.ce[t],
             "entropy": tfr.entropy[t], "verifier_ppl": tfr.verifier_ppl[t], "drafter_ppl": tfr.drafter_ppl[t],
             "predicted_speedup": float(speedup(a, k_pred, c)) if a is not None else None}
        if gen:
            g = gen["per_task"][i]
            r.update({"prompts": g["rows"], "generated_tokens": g["tokens"],
                      "steps": int(gen["stats"]["per_task"]["steps"][i]),
                      "realised_acceptance": g["realised_acceptance"],
                      "generation_expected_acceptance": g["acceptance"],
                      "tokens_per_step": g["tokens_per_step"], "num_draft_used": g["num_draft"],
                      "speculative_seconds": g["spec_seconds"], "verifier_seconds": g["verifier_seconds"],
                      "measured_speedup": g["measured_speedup"],
                      "predicted_speedup_generation": g["predicted_speedup"],
                      "predicted_speedup_verify_cost": g.get("predicted_speedup_verify_cost"),
                      "seconds_draft": g["spec_timings"].get("draft"),
                      "seconds_verify_forward": g["spec_timings"].get("verify_forward"),
                      "seconds_kernel": g["spec_timings"].get("kernel"),
                      "seconds_cache": g["spec_timings"].get("cache")})
        rows.append(r)

    # --- statistics
    rng = np.random.default_rng(cfg.seed)
    pw = {"task": tfr.window_task.numpy(), "tokens": tfr.window_tokens.numpy(),
          "alpha_sum": tfr.alpha_sum.numpy(), "kl_sum": tfr.kl_sum.numpy(), "ce_sum": tfr.ce_sum.numpy()}
    boot = _bootstrap_within(pw, tasks, cfg.bootstrap, rng)
    for i, r in enumerate(rows):
        for k in ("alpha", "kl", "ce"):
            r[f"{k}_ci95"] = _ci(boot[k][:, i])
    alpha = np.array([r["alpha"] for r in rows], float)
    kl = np.array([r["kl"] for r in rows], float)
    ce = np.array([r["ce"] for r in rows], float)
    pred = np.array([r["predicted_speedup"] for r in rows], float)
    boot_pred = _speedup_array(boot["alpha"], k_pred, c)
    unf = {
        "U_ce": {"value": _pvar(ce), "ci95": _ci([_pvar(b) for b in boot["ce"]])},
        "U_kl": {"value": _pvar(kl), "ci95": _ci([_pvar(b) for b in boot["kl"]])},
        "alpha_variance": {"value": _pvar(alpha), "ci95": _ci([_pvar(b) for b in boot["alpha"]])},
        "alpha_max_min_ratio": {"value": _ratio(alpha), "ci95": _ci([_ratio(b) for b in boot["alpha"]])},
        "predicted_speedup_variance": {"value": _pvar(pred), "ci95": _ci([_pvar(b) for b in boot_pred])},
        "predicted_speedup_max_min_ratio": {"value": _ratio(pred), "ci95": _ci([_ratio(b) for b in boot_pred])},
    }
    T = len(tasks)
    task_draws = rng.integers(0, T, size=(cfg.bootstrap, T))

    def corr(x, y):
        x, y = np.asarray(x, float), np.asarray(y, float)
        return {"rho": _spearman(x, y), "ci95": _ci([_spearman(x[d], y[d]) for d in task_draws]), "n": T}

    correlations = {"CE vs alpha": corr(ce, alpha), "KL vs alpha": corr(kl, alpha),
                    "KL vs predicted speed-up": corr(kl, pred)}
    basis = "predicted"
    speed = pred
    if gen:
        meas = np.array([_nan(r["measured_speedup"]) for r in rows])
        acc_gen = np.array([_nan(r["realised_acceptance"]) for r in rows])
        unf["measured_speedup_variance"] = {"value": _pvar(meas), "ci95": [math.nan, math.nan]}
        unf["measured_speedup_max_min_ratio"] = {"value": _ratio(meas), "ci95": [math.nan, math.nan]}
        correlations.update({"alpha vs measured speed-up": corr(alpha, meas),
                             "realised acceptance vs measured speed-up": corr(acc_gen, meas),
                             "CE vs measured speed-up": corr(ce, meas),
                             "KL vs measured speed-up": corr(kl, meas),
                             "alpha vs realised acceptance": corr(alpha, acc_gen)})
        basis, speed = "measured", meas
    ok = np.isfinite(speed)
    fastest = tasks[int(np.nanargmax(np.where(ok, speed, -np.inf)))]
    slowest = tasks[int(np.nanargmin(np.where(ok, speed, np.inf)))]
    summary = {
        "tasks": T, "fastest_task": fastest, "slowest_task": slowest, "speedup_basis": basis,
        "disparity_ratio": float(speed[tasks.index(fastest)] / speed[tasks.index(slowest)]),
        "mean_alpha": float(np.nanmean(alpha)), "cost_ratio": float(c),
        "cost_ratio_source": "measured: drafter step time / verifier step time",
        "num_draft_for_prediction": k_pred, "unfairness": unf, "correlations": correlations,
        "bootstrap": {"resamples": cfg.bootstrap, "seed": cfg.seed,
                      "within_task": "windows resampled within each task (per-task and unfairness intervals)",
                      "across_tasks": "tasks resampled (correlation intervals)"},
        "seconds": None,
    }
    if gen:
        summary["generation"] = {"speculative_seconds": gen["spec_seconds"], "verifier_seconds": gen["verifier_seconds"],
                                 "measured_speedup_overall": gen["measured_speedup"], "cost_ratio": gen["cost_ratio"],
                                 "task_stats": gen["stats"]}
    cfg_d = cfg.to_dict()
    cfg_d.update({"drafter_resolved": dname, "verifier_resolved": vname})
    report = AuditReport(rows, summary, cfg_d, _environment(device))
    summary["seconds"] = time.perf_counter() - t0
    if out_dir is not None:
        report.files = _write(report, out_dir)
    return report


def _nan(v) -> float:
    return math.nan if v is None else float(v)


def _environment(device) -> dict:
    import torch

    env = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
           "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["cpu_threads"] = torch.get_num_threads()
    for mod in ("transformers", "tokenizers", "triton", "numpy", "scipy", "matplotlib"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a version we cannot read is left out
            pass
    import specfair
    import specfair_kernels

    env["specfair"] = specfair.__version__
    env["specfair_kernels_backends"] = specfair_kernels.available_backends(device.type)
    return env


# ---------------------------------------------------------------------------- files and plots
def _clean_json(o):
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _clean_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean_json(v) for v in o]
    return o


def _write(report: AuditReport, out_dir: Path) -> dict:
    """Write every file into a temporary directory beside ``out_dir``, then move them in."""
    tmp = Path(tempfile.mkdtemp(prefix=".specfair-audit-", dir=out_dir))
    try:
        (tmp / "audit.json").write_text(json.dumps(_clean_json(report.to_dict()), indent=2, allow_nan=False) + "\n",
                                        encoding="utf-8")
        (tmp / "audit.csv").write_text(report.csv(), encoding="utf-8")
        (tmp / "audit.md").write_text(report.markdown(), encoding="utf-8")
        _plot_acceptance(report, tmp / "acceptance_speedup.png")
        _plot_divergence(report, tmp / "divergence_speedup.png")
        files = {}
        for f in sorted(tmp.iterdir()):
            os.replace(f, out_dir / f.name)
            files[f.name] = str(out_dir / f.name)
        return files
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _plot_acceptance(report: AuditReport, path: Path) -> None:
    import numpy as np

    plt = _plt()
    rows = sorted(report.tasks, key=lambda r: -r["alpha"])
    names = [r["task"] for r in rows]
    x = np.arange(len(rows))
    gen = any(r.get("measured_speedup") is not None for r in rows)
    fig, axes = plt.subplots(2, 1, figsize=(max(7, 0.45 * len(rows) + 2), 7), sharex=True)
    ax = axes[0]
    a = np.array([r["alpha"] for r in rows])
    lo = a - np.array([r["alpha_ci95"][0] for r in rows])
    hi = np.array([r["alpha_ci95"][1] for r in rows]) - a
    w = 0.4 if gen else 0.8
    ax.bar(x - (w / 2 if gen else 0), a, w, yerr=[lo, hi], capsize=2, color="#4C72B0",
           label="expected acceptance α (teacher-forced)")
    if gen:
        ax.bar(x + w / 2, [_nan(r.get("realised_acceptance")) for r in rows], w, color="#DD8452",
               label="realised acceptance (generation)")
    ax.set_ylabel("acceptance")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"Who gets the speed-up: {_short(report.config['drafter_resolved'])} drafting for "
                 f"{_short(report.config['verifier_resolved'])}", fontsize=10)
    ax = axes[1]
    ax.bar(x - (w / 2 if gen else 0), [r["predicted_speedup"] for r in rows], w, color="#55A868",
           label=f"predicted S(α; K, c), c = {report.summary['cost_ratio']:.2f}")
    if gen:
        ax.bar(x + w / 2, [_nan(r.get("measured_speedup")) for r in rows], w, color="#C44E52",
               label="measured (wall clock vs verifier alone)")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_ylabel("speed-up ×")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(x, names, rotation=45, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _short(name: str) -> str:
    """The last two components of a path or hub name (``default-pair/drafter``)."""
    return "/".join(str(name).rstrip("/").split("/")[-2:])


def _plot_divergence(report: AuditReport, path: Path) -> None:
    import numpy as np

    plt = _plt()
    rows = report.tasks
    kl = np.array([r["kl"] for r in rows])
    gen = any(r.get("measured_speedup") is not None for r in rows)
    s = report.summary
    K, c = s["num_draft_for_prediction"], s["cost_ratio"]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(kl, [r["predicted_speedup"] for r in rows], color="#55A868", label="predicted S(α; K, c)")
    if gen:
        ax.scatter(kl, [_nan(r.get("measured_speedup")) for r in rows], color="#C44E52", marker="s",
                   label="measured")
    for r in rows:
        y = r.get("measured_speedup") if gen and r.get("measured_speedup") is not None else r["predicted_speedup"]
        ax.annotate(r["task"], (r["kl"], y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    xs = np.linspace(0, max(float(np.nanmax(kl)) * 1.1, 0.1), 200)
    ax.plot(xs, speedup_lower_bound(xs, K, c), color="k", lw=1,
            label="bound S(1 − √(KL/2); K, c) (Pinsker + Jensen)")
    key = "KL vs measured speed-up" if gen else "KL vs predicted speed-up"
    cc = s["correlations"][key]
    ax.set_xlabel("KL(p ‖ q) per task (teacher-forced, held-out)")
    ax.set_ylabel("speed-up ×")
    ax.set_title(f"Divergence against speed-up: Spearman ρ = {_f(cc['rho'], 2)} {_fci(cc['ci95'], 2)}",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
