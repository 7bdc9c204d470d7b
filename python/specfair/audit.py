"""`specfair audit`: who gets how much speed-up from speculative decoding, why, and how
unfair it is.

Two measurements per task (by default a language), on the corpus's **held-out** split:

* **teacher-forced**: one forward pass of each model over held-out text, and at every
  position alpha = sum min(p, q), KL(p||q), CE(p, q) and H(p) at the audit's temperature
  (``specfair.teacher_forced``, through ``specfair_kernels.token_divergence``).  Cheap and
  low-variance: it is what the unfairness figures and the correlations use.
* **generative**: real speculative generation with ``SpeculativeGenerator`` from prompts
  cut from held-out paragraphs (the same paragraphs in every language where the corpus is
  parallel): realised acceptance, tokens per verifier call, the *measured* wall-clock
  speed-up against verifier-only generation of the same outputs, and the model-based ones:
  S(alpha; K, c, r_K) with the measured cost ratio c and the measured cost r_K of a verifier
  forward over K+1 tokens (`specfair.costs`), and PAPER.md's S(alpha; K, c) (r_K = 1),
  each with measured / predicted per task.
* **break-even**: the alpha with S(alpha; K, c, r_K) = 1 (`specfair.costs.break_even_acceptance`;
  none when even alpha = 1 cannot pay), and per task alpha - break-even (< 0: speculation loses).

Statistics (documented choices):

* Unfairness: U_ce = population variance of per-task mean CE (the paper's 𝒰), U_kl the
  same for KL (which tracks acceptance better, see PAPER.md), and variance and max/min
  ratio of per-task acceptance and of speed-up (predicted and measured).  The variances are
  corrected for within-task sampling noise (`specfair.spread.corrected_spread`: variance of
  the task means minus (T-1)/T times their mean squared standard error, clipped at 0).
* Confidence intervals are 95% bootstraps (``bootstrap`` resamples, seeded).  Per-task
  figures (percentile intervals) and the unfairness figures (basic/pivotal intervals, which
  contain their estimates) resample the held-out *windows* within each task (the tasks are
  fixed; the noise is in their estimates).  A task with a single window gets no interval
  (None, and an `AuditWarning`), nor does any spread figure then.  Correlations across
  tasks (Spearman) resample the *tasks*, since they describe a population of tasks.
* Lengths (``context_length``, ``prompt_tokens`` + 1 + ``max_new_tokens``) are checked
  against both models' context as soon as they are loaded.
* The bound drawn in the divergence plot is PAPER.md's: Pinsker + Jensen give
  alpha_T >= 1 - sqrt(KL_T / 2), and S is increasing in alpha, so
  S_T >= S(max(0, 1 - sqrt(KL_T / 2)); K, c).

Output (``out`` directory; every file is written to a temporary directory first and moved
into place only when all of them are complete): ``audit.json`` (every figure, the full
configuration and versions), ``audit.csv`` (one row per task), ``audit.md``,
``acceptance_speedup.png`` and ``divergence_speedup.png``.
"""
from __future__ import annotations

import dataclasses
import math
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

import specfair_kernels as sk
from specfair_kernels.stats import speedup

from . import __version__ as specfair_version
from . import audit_drafting as drafting
from . import corpus as corpus_mod
from . import distributed
from . import teacher_forced as tf
from ._util import check_out_dir, resolve_device, status_printer
from .audit_report import AuditReport, float_or_nan, write_report
from .baseline import measure_speedup
from .costs import break_even_acceptance, cached_costs, measured_over_predicted
from .generator import SpeculativeGenerator
from .models import context_length, default_pair_sources, load_pair, model_device
from .spread import (
    MIN_WINDOWS,
    RATIO_ESTIMATOR,
    SPREAD_ESTIMATOR,
    corrected_spread,
    few_window_tasks,
    max_min_ratio,
    percentile_interval,
    ratio_spread,
    resample_task_moments,
    spearman,
    speedup_array,
    task_moments,
    variance,
)

__all__ = ["AuditConfig", "AuditReport", "AuditError", "AuditWarning", "run"]


class AuditError(ValueError):
    """Bad audit input (unknown task, unusable device or output directory, ...)."""


class AuditWarning(UserWarning):
    """A figure the audit could not give (e.g. an interval for a task with one window)."""


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
    draft: str = "sample"               # "sample" | "argmax" (engine-style one-hot drafts)
    verify_method: str = "token"        # "token" | "block" | "both" (each task generated under both rules)
    ngram: bool = False                 # also generate with the n-gram (prompt-lookup) drafter, timed alike
    ngram_max: int = 3                  # its suffix lengths, tried longest first
    ngram_min: int = 1
    # common
    device: str = "cpu"
    dtype: str | None = None            # None: the models' own (float32 on the CPU)
    batch_size: int = 16
    seed: int = 0
    bootstrap: int = 1000
    out: str | None = "specfair-audit"
    progress: bool = True
    # models: GGUF cache and placement over several devices
    gguf_cache: bool = True             # GGUF files: read/keep the dense copy (specfair.gguf_cache)
    device_map: str | None = None       # e.g. "auto": spread each model over the devices (accelerate)

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
        if self.device_map is not None and not isinstance(self.device_map, (str, dict)):
            raise AuditError(f"device_map must be None, a strategy name such as 'auto' or a dict, "
                             f"got {self.device_map!r}")
        self._validate_drafting()
        if self.prompt_tokens >= self.context_length:
            raise AuditError(f"prompt_tokens ({self.prompt_tokens}) must be below context_length "
                             f"({self.context_length})")

    def _validate_drafting(self) -> None:
        if self.draft not in drafting.DRAFT_CHOICES:
            raise AuditError(f"draft must be one of {drafting.DRAFT_CHOICES}, got {self.draft!r}")
        if self.verify_method not in drafting.VERIFY_METHOD_CHOICES:
            raise AuditError(f"verify_method must be one of {drafting.VERIFY_METHOD_CHOICES}, "
                             f"got {self.verify_method!r}")
        if self.ngram:
            if self.num_draft == "auto":
                raise AuditError("ngram needs an integer num_draft (auto needs a drafter's cost)")
            try:
                drafting.NgramConfig(self.ngram_max, self.ngram_min)
            except ValueError as e:
                raise AuditError(f"ngram: {e}") from None


# ---------------------------------------------------------------------------- measurements
def model_placement(cfg: AuditConfig, device) -> dict:
    """`load_pair` keywords for where the models go and whether GGUF files are cached."""
    kw = {"cache": cfg.gguf_cache}
    if cfg.device_map is None:
        kw["device"] = str(device)
    elif cfg.device_map == "auto" and device.type == "cpu":
        kw["device_map"] = {"": "cpu"}    # accelerate's "auto" would take a GPU the user did not ask for
    else:
        kw["device_map"] = cfg.device_map
    return kw


def _load_models(cfg: AuditConfig, device):
    """(drafter, verifier, tokenizer, drafter source, verifier source) through `load_pair`."""
    drafter, verifier = default_pair_sources(cfg.drafter, cfg.verifier)
    kw = model_placement(cfg, device)
    if cfg.dtype is not None:
        kw["dtype"] = cfg.dtype
    if cfg.gguf_file is not None:
        kw["drafter_gguf_file"] = kw["verifier_gguf_file"] = cfg.gguf_file
    try:
        d, v, tok = load_pair(drafter, verifier, **kw)
    except (OSError, ValueError, ImportError) as e:
        raise AuditError(f"could not load the pair: {e}") from None
    return d, v, tok, drafter, verifier


def _check_lengths(cfg: AuditConfig, drafter, verifier) -> None:
    """--context-length, and the prompt (+ <s>) with the generated tokens, against both
    models' context (positions), before any pass over them."""
    for who, model in (("drafter", drafter), ("verifier", verifier)):
        limit = context_length(model)
        if limit is None:
            continue
        if cfg.context_length > limit:
            raise AuditError(f"--context-length (context_length) {cfg.context_length} exceeds the {who}'s context "
                             f"of {limit} positions; use at most --context-length {limit}")
        if cfg.generative and cfg.prompt_tokens + 1 + cfg.max_new_tokens > limit:
            raise AuditError(
                f"--prompt-tokens {cfg.prompt_tokens} (+ <s>) with --max-new-tokens {cfg.max_new_tokens} exceeds "
                f"the {who}'s context of {limit} positions; use at most --max-new-tokens "
                f"{max(limit - cfg.prompt_tokens - 1, 0)} or a smaller --prompt-tokens (prompt_tokens, "
                "max_new_tokens)")


def _prompts(tok, corpus, tasks: Sequence[str], n: int, prompt_tokens: int):
    """Per task, up to n prompts: <s> + the first prompt_tokens tokens of held-out paragraphs
    long enough to have them (in held-out order, which is parallel across languages)."""
    bos = tok.bos_token_id
    encoded = tf.encode_texts(tok, {t: corpus.tasks[t].heldout for t in tasks})
    out = {}
    for t in tasks:
        ids = []
        for enc in encoded[t]:
            if len(enc) >= prompt_tokens:
                ids.append(([bos] if bos is not None else []) + enc[:prompt_tokens])
            if len(ids) == n:
                break
        if not ids:
            raise AuditError(f"task {t!r} has no held-out paragraph of {prompt_tokens} tokens; "
                             "lower --prompt-tokens")
        out[t] = ids
    return out


def generative(cfg: AuditConfig, tok, corpus, tasks, drafter, verifier, **variant) -> dict:
    """`measure_speedup` over every task's prompts, each request timed as configured;
    ``variant`` overrides the generator's drafting (``ngram``, ``verify_method``, ``draft``)."""
    prompts = _prompts(tok, corpus, tasks, cfg.num_prompts, cfg.prompt_tokens)
    kw = {"draft": cfg.draft, "verify_method": "token" if cfg.verify_method == "both" else cfg.verify_method,
          **variant}
    generator = SpeculativeGenerator(None if kw.get("ngram") else drafter, verifier, num_draft=cfg.num_draft,
                                     temperature=cfg.temperature, pad_token_id=tok.pad_token_id, **kw)
    # lists of token lists: measure_speedup left-pads them itself
    out = measure_speedup(generator, [p for t in tasks for p in prompts[t]], None,
                           task_ids=[i for i, t in enumerate(tasks) for _ in prompts[t]],
                           num_tasks=len(tasks), max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                           eos_token_id=None, repeats=cfg.timing_repeats, progress=cfg.progress,
                           batch_size=cfg.generation_batch_size)
    first = len(prompts[tasks[0]])   # the batch size whose costs give out["cost_ratio"]
    out["verify_cost"] = generator.verify_cost(min(cfg.generation_batch_size or first, first))
    return out


def _task_row(t: str, i: int, tfr, gen: dict | None, k_pred: int, c: float, r_k: float, draft: str) -> dict:
    a = tfr.alpha_argmax.get(t) if draft == "argmax" else tfr.alpha[t]  # the drafting's acceptance
    r = {"task": t, "heldout_tokens": tfr.tokens[t], "alpha": tfr.alpha[t], "kl": tfr.kl[t], "ce": tfr.ce[t],
         "entropy": tfr.entropy[t], "verifier_ppl": tfr.verifier_ppl[t], "drafter_ppl": tfr.drafter_ppl[t],
         "predicted_speedup": float(speedup_array(a, k_pred, c, r_k)) if a is not None else None,
         "predicted_speedup_rk1": float(speedup(a, k_pred, c)) if a is not None else None,
         "break_even_acceptance": break_even_acceptance(k_pred, c, r_k)}   # inf: even alpha = 1 cannot pay
    r["acceptance_margin"] = a - r["break_even_acceptance"] if a is not None else None
    if gen:
        g = gen["per_task"][i]
        r.update({"prompts": g["rows"], "generated_tokens": g["tokens"],
                  "steps": int(gen["stats"]["per_task"]["steps"][i]),
                  "realised_acceptance": g["realised_acceptance"],
                  "generation_expected_acceptance": g["acceptance"],
                  "tokens_per_step": g["tokens_per_step"], "num_draft_used": g["num_draft"],
                  "speculative_seconds": g["spec_seconds"], "verifier_seconds": g["verifier_seconds"],
                  "measured_speedup": g["measured_speedup"],
                  **measured_over_predicted(g["measured_speedup"], r["predicted_speedup"], r["predicted_speedup_rk1"]),
                  "predicted_speedup_generation": g["predicted_speedup"],
                  "predicted_speedup_verify_cost": g.get("predicted_speedup_verify_cost"),
                  "break_even_acceptance_generation": g.get("break_even_acceptance"),
                  "acceptance_margin_generation": g.get("acceptance_margin"),
                  "seconds_draft": g["spec_timings"].get("draft"),
                  "seconds_verify_forward": g["spec_timings"].get("verify_forward"),
                  "seconds_kernel": g["spec_timings"].get("kernel")})
    return r


def _costs(cfg: AuditConfig, gen: dict | None, drafter, verifier, k_pred: int) -> tuple[float, float]:
    """(c, r_K at K = k_pred): from the generation's measurement, else measured here."""
    if gen:
        return gen["cost_ratio"], gen["verify_cost"][k_pred] if gen.get("verify_cost") else 1.0
    m = cached_costs(drafter, verifier, 1, k_pred)
    return m["cost_ratio"], m["verify_cost"][k_pred]


def run(config: AuditConfig | None = None, **overrides) -> AuditReport:
    """Run the audit (see the module docstring) and, unless ``config.out`` is None, write
    its files.  Keyword arguments override fields of ``config`` (or of the defaults)."""
    cfg = dataclasses.replace(config or AuditConfig(), **overrides)
    cfg.validate()
    device = resolve_device(cfg.device, AuditError)
    cfg, device, launched = join_ranks(cfg, device)
    out_dir = check_out_dir(cfg.out, AuditError) if cfg.out is not None else None
    t0 = time.perf_counter()
    say = status_printer(cfg.progress)

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
    if cfg.device_map is not None:
        device = model_device(verifier)     # spread models: inputs go to the first layer's device
    _check_lengths(cfg, drafter, verifier)

    say(f"teacher-forced pass over {len(tasks)} tasks ...")
    windows = tf.token_windows(tok, {t: corpus.tasks[t].heldout for t in tasks},
                               context_length=cfg.context_length, max_tokens_per_task=cfg.teacher_forced_tokens)
    # At temperature 0 (greedy) the divergences are taken at T = 1: a property of the pair.
    tfr = tf.evaluate_sharded(verifier, drafter, windows,
                              temperature=cfg.temperature if cfg.temperature > 0 else 1.0,
                              batch_size=cfg.batch_size, device=device, progress=cfg.progress)
    gen = None
    if cfg.generative:
        say("speculative generation, then verifier-only generation of the same outputs ...")
        gen = generative(cfg, tok, corpus, tasks, drafter, verifier)
    k_pred = cfg.num_draft if isinstance(cfg.num_draft, int) else 4  # "auto": shown at K = 4
    c, r_k = _costs(cfg, gen, drafter, verifier, k_pred)
    rows = [_task_row(t, i, tfr, gen, k_pred, c, r_k, cfg.draft) for i, t in enumerate(tasks)]
    drafting.add_variants(cfg, rows, tfr, tasks, gen, lambda **v: generative(cfg, tok, corpus, tasks, drafter,
                                                                         verifier, **v), say)
    summary = _summary(cfg, rows, tfr, tasks, gen, c, k_pred, r_k)
    summary["drafting"] = drafting.variant_summary(rows, tasks, cfg.verify_method, cfg.ngram and gen is not None)
    cfg_d = cfg.to_dict()
    cfg_d.update({"drafter_resolved": dname, "verifier_resolved": vname})
    report = AuditReport(rows, summary, cfg_d, _environment(device))
    summary["seconds"] = time.perf_counter() - t0
    for w in summary["warnings"]:
        warnings.warn(w, AuditWarning, stacklevel=2)
    if out_dir is not None:
        report.files = write_report(report, out_dir)
    if launched:
        distributed.leave()
    return report


def join_ranks(cfg: AuditConfig, device):
    """Under ``torchrun`` (WORLD_SIZE > 1): join the process group; every rank takes its share
    of the teacher-forced windows (`teacher_forced.evaluate_sharded`), and only rank 0 runs the
    timed generation and writes the report, so ranks > 0 get ``generative=False, out=None``.
    -> (config, this rank's device, whether this call joined the group)."""
    launched = distributed.init_from_env(device)
    rank, world = distributed.rank_and_world()
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    if rank > 0:
        cfg = dataclasses.replace(cfg, generative=False, out=None, progress=False)
    return cfg, device, launched


def _unfairness(cfg: AuditConfig, rows: list[dict], tfr, tasks: list[str], k_pred: int, c: float, r_k: float,
                rng: np.random.Generator) -> tuple[dict, list[str]]:
    """Per-task intervals (into ``rows``) and the noise-corrected spread figures
    (`specfair.spread.corrected_spread`), all from one set of window resamples within tasks;
    and the warnings for tasks with too few windows for an interval (their intervals are n/a)."""
    sums = {k: getattr(tfr, f"{k}_sum").numpy() for k in ("alpha", "kl", "ce")}
    wt, wn = tfr.window_task.numpy(), tfr.window_tokens.numpy()
    est = task_moments(wt, wn, sums, len(tasks))
    boot = resample_task_moments(wt, wn, sums, len(tasks), cfg.bootstrap, rng)
    short = few_window_tasks(est["windows"], tasks)
    for i, r in enumerate(rows):
        for k in ("alpha", "kl", "ce"):
            r[f"{k}_ci95"] = [None, None] if tasks[i] in short else percentile_interval(boot[k][0][:, i])
    notes = [f"task {t!r} has {int(est['windows'][tasks.index(t)])} teacher-forced window(s) "
                f"({tfr.tokens[t]} held-out tokens): an interval needs {MIN_WINDOWS} windows, i.e. more than "
                f"{cfg.context_length} tokens ({MIN_WINDOWS * cfg.context_length} for two full windows of "
                f"--context-length {cfg.context_length}; raise --teacher-forced-tokens or give the task more "
                "held-out text); its intervals and every spread figure's interval are n/a" for t in short]

    def pred(a):
        return speedup_array(a, k_pred, c, r_k)

    unf = {"U_ce": corrected_spread(est["ce"], boot["ce"]), "U_kl": corrected_spread(est["kl"], boot["kl"]),
           "alpha_variance": corrected_spread(est["alpha"], boot["alpha"]),
           "alpha_max_min_ratio": ratio_spread(est["alpha"][0], boot["alpha"][0], windows=est["windows"]),
           "predicted_speedup_variance": corrected_spread(est["alpha"], boot["alpha"], pred),
           "predicted_speedup_max_min_ratio": ratio_spread(pred(est["alpha"][0]), pred(boot["alpha"][0]),
                                                           windows=est["windows"])}
    return unf, notes


def _summary(cfg: AuditConfig, rows: list[dict], tfr, tasks: list[str], gen: dict | None, c: float,
             k_pred: int, r_k: float) -> dict:
    """Unfairness figures with intervals, correlations across tasks, fastest and slowest task.

    Per-task and unfairness intervals resample held-out windows within each task; the
    correlation intervals resample the tasks."""
    rng = np.random.default_rng(cfg.seed)
    unf, notes = _unfairness(cfg, rows, tfr, tasks, k_pred, c, r_k, rng)
    fig = {k: np.array([r[k] for r in rows], float) for k in ("alpha", "kl", "ce", "predicted_speedup")}
    T = len(tasks)
    task_draws = rng.integers(0, T, size=(cfg.bootstrap, T))

    def corr(x, y):
        x, y = np.asarray(x, float), np.asarray(y, float)
        return {"rho": spearman(x, y), "ci95": percentile_interval([spearman(x[d], y[d]) for d in task_draws]),
                "n": T}

    correlations = {"CE vs alpha": corr(fig["ce"], fig["alpha"]), "KL vs alpha": corr(fig["kl"], fig["alpha"]),
                    "KL vs predicted speed-up": corr(fig["kl"], fig["predicted_speedup"])}
    basis, speed = "predicted", fig["predicted_speedup"]
    if gen:
        meas = np.array([float_or_nan(r["measured_speedup"]) for r in rows])
        acc_gen = np.array([float_or_nan(r["realised_acceptance"]) for r in rows])
        unf["measured_speedup_variance"] = {"value": variance(meas), "ci95": [None, None],
                                            "estimator": "variance of the measured speed-ups (no interval)"}
        unf["measured_speedup_max_min_ratio"] = {"value": max_min_ratio(meas), "ci95": [None, None],
                                                 "estimator": "max/min (no interval)"}
        correlations.update({"alpha vs measured speed-up": corr(fig["alpha"], meas),
                             "realised acceptance vs measured speed-up": corr(acc_gen, meas),
                             "CE vs measured speed-up": corr(fig["ce"], meas),
                             "KL vs measured speed-up": corr(fig["kl"], meas),
                             "alpha vs realised acceptance": corr(fig["alpha"], acc_gen)})
        basis, speed = "measured", meas
    ok = np.isfinite(speed)
    fastest = tasks[int(np.nanargmax(np.where(ok, speed, -np.inf)))]
    slowest = tasks[int(np.nanargmin(np.where(ok, speed, np.inf)))]
    summary = {
        "tasks": T, "fastest_task": fastest, "slowest_task": slowest, "speedup_basis": basis,
        "disparity_ratio": float(speed[tasks.index(fastest)] / speed[tasks.index(slowest)]),
        "mean_alpha": float(np.nanmean(fig["alpha"])), "cost_ratio": float(c),
        "cost_ratio_source": "measured: drafter step time / verifier step time",
        "verify_cost": float(r_k),
        "verify_cost_source": "measured: verifier time over K+1 tokens / over 1 token, at K = num_draft_for_prediction",
        "prediction_model": "predicted_speedup = S(alpha; K, c, r_K) = E[tokens per step] / (K c + r_K) with the "
                            "measured r_K; _rk1: r_K = 1 (PAPER.md); per task at the drafting's acceptance "
                            "(alpha_argmax under --draft argmax), spreads at alpha = sum min(p, q)",
        "num_draft_for_prediction": k_pred, "unfairness": unf, "correlations": correlations,
        "break_even_acceptance": (even := break_even_acceptance(k_pred, c, r_k)), "speculation_can_pay": even <= 1,
        "break_even_source": "S(alpha; K, c, r_K) = 1 at K = num_draft_for_prediction; null: K c + r_K > K + 1",
        "spread_estimator": {"variances": SPREAD_ESTIMATOR, "ratios": RATIO_ESTIMATOR,
                             "per_task": "95% percentile bootstrap of the task's mean, windows resampled"},
        "warnings": notes,
        "bootstrap": {"resamples": cfg.bootstrap, "seed": cfg.seed,
                      "within_task": "windows resampled within each task (per-task and unfairness intervals)",
                      "across_tasks": "tasks resampled (correlation intervals)"},
        "seconds": None,
    }
    if gen:
        summary["generation"] = {"speculative_seconds": gen["spec_seconds"],
                                 "verifier_seconds": gen["verifier_seconds"],
                                 "measured_speedup_overall": gen["measured_speedup"], "cost_ratio": gen["cost_ratio"],
                                 "break_even_acceptance": {str(k): v for k, v in
                                                           gen.get("break_even_acceptance", {}).items()},
                                 "task_stats": gen["stats"]}
    return summary


def _environment(device) -> dict:
    env = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
           "device": str(device), "ranks": distributed.rank_and_world()[1]}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["cpu_threads"] = torch.get_num_threads()
    for mod in ("transformers", "tokenizers", "triton", "numpy", "scipy", "matplotlib"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a version we cannot read is left out
            pass
    env["specfair"] = specfair_version
    env["specfair_kernels_backends"] = sk.available_backends(device.type)
    return env


if __name__ == "__main__":
    # `python -m specfair.audit ARGS` and `torchrun --nproc_per_node N -m specfair.audit ARGS` are
    # `specfair audit ARGS`: the `specfair` entry point, run as a script (not imported here).
    import runpy

    sys.argv[1:1] = ["audit"]
    runpy.run_module("specfair", run_name="__main__", alter_sys=True)
