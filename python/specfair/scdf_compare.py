"""Compare s-CDF with its baselines under one budget: knobs chosen on validation, figures
reported on held-out.

``run_comparison(config, methods, seeds)`` loads the pair and the corpus once (split train /
validation / held-out, `specfair.corpus`), and for every method

1. fine-tunes a fresh copy of the drafter for every candidate knob setting of the method
   (`specfair.scdf_select`: the same number of candidates per method, each with every seed,
   the same steps, batch and context: the same training tokens per method), and measures
   each on the **validation** split only (teacher-forced, `specfair.teacher_forced`);
2. keeps the candidate that `scdf_select.selection_score` ranks first on validation;
3. measures only that candidate's drafters (one per seed) on the **held-out** split, and
   beside the teacher-forced figures (`specfair.scdf_measure`, ``measure``): their
   **measured** generative speed-up per task, through the audit's own timing path, and the
   measured disparity (fastest ÷ slowest task), before and after; and their teacher-forced
   figures on a second, **out-of-domain** corpus (Django's catalogues by default).

The held-out split is never read before step 3, and nothing measured on it (or on the
out-of-domain corpus, or in generation) feeds a choice.  The verifier is shared, frozen and
fingerprinted: the report says it is bit for bit unchanged at the end (else it raises).
It writes

* ``<prefix>.json``  held-out figures of the chosen candidate of every method: per task and
  seed alpha, CE, KL, speed-up, before and after; per run the paired-bootstrap 95% intervals
  (held-out windows resampled within each task) of the change in alpha variance and in U;
  per method the means over seeds with Student-t 95% intervals across seeds; under
  ``"selection"`` what was searched, each candidate's validation figures and what was chosen;
  per run the training throughput (tokens/s, share of step time in the weight computation);
  ``generation_before`` and per run ``generation`` (measured speed-up, realised acceptance
  per task, disparity before and after), ``ood`` and per run ``ood`` (out-of-domain
  before/after figures), per method their aggregates; ``verifier_unchanged``;
* ``<prefix>.md``    the held-out table, the chosen knobs and per-task alpha;
* ``<prefix>.png``   per-task held-out alpha before and after each method, and the changes.

Figures: ``mean_alpha`` (tasks weighted uniformly), ``alpha_variance`` (population
variance of per-task alpha), ``U_ce`` (the paper's unfairness, variance of per-task CE),
``U_kl``, the speed-up S(alpha; K, c) per task, and the worst per-task change of alpha.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Mapping

from ._util import resolve_device, status_printer, write_json, write_text
from .scdf import train
from .scdf_config import METHODS, ScdfConfig, ScdfError
from .scdf_eval import evaluate_drafter, load_models, load_task_corpus, prepare_eval_cache
from .scdf_measure import (
    MeasureOptions,
    OodEval,
    generation_aggregate,
    generation_change,
    generation_config,
    generation_markdown,
    measure_generation,
    ood_aggregate,
    ood_markdown,
    resolve_ood,
)
from .scdf_select import candidates, merge_space, seed_average, selection_score
from .spread import before_after, paired_bootstrap, relative_change, seed_interval, variance
from .training import fingerprint

TARGETS = {"alpha_variance_change": -0.40, "U_ce_change": -0.25, "mean_alpha_change": 0.0,
           "worst_alpha_change": -0.01}


def _rel_change(key):
    """Bootstrap statistic: relative change of the variance of per-task ``key`` (before, after)."""
    def stat(before, after):
        return relative_change(variance(before[key]), variance(after[key]))
    return stat


def _meets(fig: dict) -> dict[str, bool]:
    return {"alpha_variance_-40%": fig["alpha_variance_change"] <= TARGETS["alpha_variance_change"],
            "U_ce_-25%": fig["U_ce_change"] <= TARGETS["U_ce_change"],
            "mean_alpha_not_falling": fig["mean_alpha_change"] >= TARGETS["mean_alpha_change"],
            "no_task_loses_1_point": fig["worst_alpha_change"] >= TARGETS["worst_alpha_change"]}


class _Shared:
    """What every run of a comparison shares: models, corpus, evaluation caches."""

    def __init__(self, base: ScdfConfig):
        self.base = base
        self.device = resolve_device(base.device, ScdfError)
        self.verifier, self.drafter0, self.tokenizer = load_models(base)
        self.corpus = load_task_corpus(base)
        self.names = [t for t in self.corpus.task_names if self.corpus.tasks[t].train]
        self.verifier.to(self.device)
        n_ver = sum(p.numel() for p in self.verifier.parameters())
        n_dra = sum(p.numel() for p in self.drafter0.parameters())
        self.cost_ratio = base.cost_ratio if base.cost_ratio is not None else n_dra / n_ver
        self.caches: dict[str, dict] = {}

    def cache(self, split: str) -> dict:
        """The evaluation cache of ``split`` (windows, verifier logits, the original drafter's
        figures), built on first use."""
        if split not in self.caches:
            ec = prepare_eval_cache({}, self.base, self.verifier, self.tokenizer, self.corpus, self.names,
                                    self.device, split=split)
            ec["before"] = evaluate_drafter(self.base, self.drafter0.to(self.device), ec, self.device)
            self.caches[split] = ec
        return self.caches[split]

    def fine_tune(self, cfg: ScdfConfig):
        return train(cfg, verifier=self.verifier, drafter=copy.deepcopy(self.drafter0), tokenizer=self.tokenizer,
                     corpus=self.corpus)

    def generate(self, acfg, drafter) -> dict:
        """``drafter``'s measured generation on the held-out prompts (`scdf_measure`)."""
        return measure_generation(acfg, self.tokenizer, self.corpus, self.names, drafter.to(self.device),
                                  self.verifier)

    def figures(self, cfg: ScdfConfig, drafter, split: str):
        ec = self.cache(split)
        after = evaluate_drafter(cfg, drafter, ec, self.device)
        return after, before_after(ec["before"], after, cfg.num_draft, self.cost_ratio)


def _select(sh: _Shared, method: str, seeds, budget: int, space: dict, work: Path) -> tuple[dict, list, dict]:
    """Fine-tune every candidate of ``method`` with every seed and rank them on validation.
    Returns (the selection record, the chosen candidate's runs [(cfg, result)], its knobs)."""
    record: dict[str, Any] = {"split": "validation", "space": {k: list(v) for k, v in space.items()},
                              "budget": budget, "candidates": []}
    best = None
    for ci, knobs in enumerate(candidates(method, budget, space)):
        runs, figs = [], []
        for seed in seeds:
            cfg = dataclasses.replace(sh.base, method=method, seed=seed, **knobs, evaluate=False, resume=False,
                                      stop_after=None, cost_ratio=sh.cost_ratio,
                                      out_dir=str(work / f"{method}-c{ci}-seed{seed}"))
            res = sh.fine_tune(cfg)
            figs.append(sh.figures(cfg, res.drafter, "validation")[1])
            runs.append((cfg, res))
        avg = seed_average(figs)
        score = selection_score(avg)
        record["candidates"].append({"knobs": knobs, "validation": avg, "score": list(score)})
        if best is None or score > best[0]:
            best = (score, runs, knobs)
    record["chosen"] = best[2]
    record["candidates_run"] = len(record["candidates"])
    return record, best[1], best[2]


def run_comparison(base: ScdfConfig, methods=METHODS, seeds=(0, 1, 2), *, prefix: str = "scdf_compare",
                   work_dir: str | None = None, n_boot: int = 500, budget: int = 4,
                   search: Mapping[str, Any] | None = None, measure: MeasureOptions | None = None) -> dict[str, Any]:
    """Choose every method's knobs on validation (``budget`` candidates per method, each with
    every seed; ``search`` overrides knob values, see `scdf_select.merge_space`), then report
    the chosen candidates on held-out, with their measured generation and out-of-domain
    figures (``measure``, `scdf_measure.MeasureOptions`; default: both, the out-of-domain
    corpus when it is installed); write the report in ``base.out_dir`` (files
    ``<prefix>.json/.md/.png``); fine-tuned drafters and checkpoints go under ``work_dir``
    (default ``<out_dir>/<prefix>_runs``)."""
    methods, seeds = list(methods), list(seeds)
    opts = measure if measure is not None else MeasureOptions()
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ScdfError(f"methods must be among {METHODS}, got {methods}")
    if not seeds:
        raise ScdfError("seeds must name at least one seed")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise ScdfError(f"budget must be a positive int, got {budget!r}")
    if not base.validation_fraction > 0:
        raise ScdfError("the comparison chooses knobs on validation text; validation_fraction must be > 0")
    spaces = {m: merge_space(m, search, ScdfError) for m in methods}
    base.validate()
    acfg = generation_config(base, opts) if opts.generate else None
    ood_source = resolve_ood(opts.ood_corpus, status_printer(base.progress))
    out = Path(base.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(work_dir) if work_dir else out / f"{prefix}_runs"
    t0 = time.perf_counter()
    sh = _Shared(base)
    ood = OodEval(base, ood_source, opts.ood_options, sh.names, sh.device) if ood_source else None
    verifier_print = fingerprint(sh.verifier)
    selection, chosen = {}, {}
    for method in methods:                      # step 1-2: validation only
        selection[method], chosen[method], _ = _select(sh, method, seeds, budget, spaces[method], work)
    before = sh.cache("heldout")["before"]      # step 3: the held-out split, first read here
    gen0 = sh.generate(acfg, sh.drafter0) if acfg else None
    if ood:
        ood.prepare(sh.verifier, sh.tokenizer, sh.drafter0)
    runs = []
    for method in methods:
        for cfg, res in chosen[method]:
            t1 = time.perf_counter()
            after, fig = sh.figures(cfg, res.drafter, "heldout")
            runs.append(_run_record(cfg, res, before, after, fig, n_boot, time.perf_counter() - t1))
            if gen0 and (opts.generate_seeds is None or cfg.seed in opts.generate_seeds):
                runs[-1]["generation"] = generation_change(gen0, sh.generate(acfg, res.drafter))
            if ood:
                runs[-1]["ood"] = ood.figures(cfg, res.drafter, sh.cost_ratio)
        chosen[method] = None
    base_d = base.to_dict()
    report = {
        "description": "s-CDF and baselines at equal steps, training tokens and search budget; knobs chosen on "
                       f"validation, figures on held-out, teacher-forced, temperature {base.temperature:g}; "
                       f"speed-up S(alpha; K={base.num_draft}, c={sh.cost_ratio:.4f})",
        "config": base_d, "methods": methods, "seeds": seeds, "task_names": sh.names, "split": "heldout",
        "device": str(sh.device), "cost_ratio": sh.cost_ratio, "num_draft": base.num_draft,
        "heldout_tokens": before.tokens, "targets": TARGETS,
        "before": before.to_dict(base.num_draft, sh.cost_ratio), "runs": runs, "selection": selection,
        "aggregate": {m: _aggregate([r for r in runs if r["method"] == m], sh.names) for m in methods},
        "measure": opts.to_dict(), "generation_before": gen0,
        "ood": ood.record(sh.cost_ratio) if ood else None,
        "ood_note": None if ood else f"Not measured (--ood-corpus {opts.ood_corpus}: "
                                     + ("skipped)." if opts.ood_corpus in (None, "none") else "source not installed)."),
        "verifier_fingerprint": verifier_print, "verifier_unchanged": fingerprint(sh.verifier) == verifier_print,
        "seconds_total": time.perf_counter() - t0,
    }
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        report["aggregate"][m]["generation"] = generation_aggregate(rs, sh.names) if gen0 else None
        report["aggregate"][m]["ood"] = ood_aggregate(rs, ood.names) if ood else None
    if not report["verifier_unchanged"]:
        raise RuntimeError("the verifier's parameters changed during the comparison; they must stay frozen")
    paths = {"json": out / f"{prefix}.json", "markdown": out / f"{prefix}.md", "png": out / f"{prefix}.png"}
    write_json(paths["json"], report)
    write_text(paths["markdown"], markdown(report))
    plot(report, paths["png"])
    report["paths"] = {k: str(v) for k, v in paths.items()}
    report["markdown_table"] = table(report)
    return report


def _run_record(cfg: ScdfConfig, res, before, after, fig: dict, n_boot: int, seconds: float) -> dict:
    """One (method, seed) run of the chosen candidate: its held-out figures, paired-bootstrap
    intervals, targets and training throughput."""
    ci = {"alpha_variance_change": paired_bootstrap([before, after], _rel_change("alpha"), n_boot, seed=cfg.seed),
          "U_ce_change": paired_bootstrap([before, after], _rel_change("ce"), n_boot, seed=cfg.seed)}
    rep = res.report
    return {"method": cfg.method, "seed": cfg.seed, "split": "heldout", "eval_seconds": seconds,
            "train_seconds": rep["seconds"], "knobs": {k: getattr(cfg, k) for k in ("lr", "uniform_mix",
                                                                                    "balance_mix", "temperature_lr")},
            "figures": fig, "intervals": ci, "meets": _meets(fig),
            "drafter_temperature": rep["drafter_temperature"], "tokens_per_task": rep["tokens_per_task"],
            "training_tokens": rep["training_tokens"], "throughput": rep.get("throughput"),
            "final_probabilities": res.history[-1]["probabilities"] if res.history else None,
            "final_train_divergence": res.history[-1]["divergence"] if res.history else None}


def _aggregate(rs: list[dict], names: list[str]) -> dict:
    """One method's figures over its seeds: means, minima, maxima, per-task alpha after."""
    keys = ("alpha_variance_change", "U_ce_change", "U_kl_change", "mean_alpha_change",
            "worst_alpha_change", "speedup_variance_change")
    a = {k: [r["figures"][k] for r in rs] for k in keys}
    return {
        "seeds": [r["seed"] for r in rs],
        **{f"{k}_mean": sum(v) / len(v) for k, v in a.items()},
        **{f"{k}_min": min(v) for k, v in a.items()},
        **{f"{k}_max": max(v) for k, v in a.items()},
        "after_mean": {k: sum(r["figures"]["after"][k] for r in rs) / len(rs) for k in rs[0]["figures"]["after"]},
        "per_task_alpha_after": {t: sum(r["figures"]["per_task"][t]["alpha_after"] for r in rs) / len(rs)
                                 for t in names},
        "worst_task": min(((r["figures"]["worst_alpha_change"], r["figures"]["worst_task"]) for r in rs))[1],
        "meets_all_seeds": {k: all(r["meets"][k] for r in rs) for k in rs[0]["meets"]},
        "seed_intervals": {k: seed_interval(v) for k, v in a.items()},
    }


def _pct(x):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:+.1f}%"


def table(report: dict) -> str:
    b = report["before"]["summary"]
    lines = ["| method | seed | mean α | var α | Δ var α [95% CI] | 𝒰 (var CE) | Δ𝒰 [95% CI] | Δ mean α | "
             "worst Δα (task) | mean S |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| original drafter | – | {b['mean_alpha']:.4f} | {b['alpha_variance']:.2e} | – | {b['U_ce']:.2e} "
             "| – | – | – | "
             f"{b['mean_speedup']:.3f} |"]
    for r in report["runs"]:
        f, ci = r["figures"], r["intervals"]
        a = f["after"]
        lines.append(
            f"| {r['method']} | {r['seed']} | {a['mean_alpha']:.4f} | {a['alpha_variance']:.2e} | "
            f"{_pct(f['alpha_variance_change'])} [{_pct(ci['alpha_variance_change']['low'])}, "
            f"{_pct(ci['alpha_variance_change']['high'])}] | {a['U_ce']:.2e} | {_pct(f['U_ce_change'])} "
            f"[{_pct(ci['U_ce_change']['low'])}, {_pct(ci['U_ce_change']['high'])}] | "
            f"{100 * f['mean_alpha_change']:+.2f} pt | {100 * f['worst_alpha_change']:+.2f} pt ({f['worst_task']}) | "
            f"{a['mean_speedup']:.3f} |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    names = report["task_names"]
    methods = report["methods"]
    cfg = report["config"]
    lines = [
        "# s-CDF against its baselines (held-out, teacher-forced)", "",
        report["description"] + ".", "",
        f"Budget per run: {cfg['steps']} steps × {cfg['batch_size']} windows × {cfg['context_length']} tokens "
        f"(training split), loss `{cfg['loss']}`, weights from `{cfg['weight_divergence']}`, "
        f"device {report['device']}, seeds {report['seeds']}; per method "
        f"{_budget(report)} candidate knob settings, each with every seed, chosen on the validation split "
        f"(validation fraction {cfg['validation_fraction']}). Every figure below is held-out: "
        f"{sum(report['heldout_tokens'].values())} tokens over {len(names)} tasks. "
        f"Total time {report['seconds_total'] / 60:.1f} min.", "",
        "Targets: var α −40% or better, 𝒰 −25% or better, mean α not falling, no task losing "
        "more than 1 point of α.", "",
        "## Chosen on validation", "",
        "| method | chosen knobs | candidates |", "|---|---|---|",
        *[f"| {m} | {_knobs(report['selection'][m]['chosen'])} | "
          f"{report['selection'][m]['candidates_run']} |" for m in methods], "",
        "## Held-out, over seeds (mean [95% Student-t interval across seeds])", "",
        "| method | Δ var α | Δ𝒰 | Δ mean α (pt) | worst Δα (pt, worst seed) |", "|---|---|---|---|---|",
        *[_seed_row(m, report["aggregate"][m]) for m in methods], "",
        "## Held-out, per seed (intervals: paired percentile bootstrap over held-out windows, "
        "resampled within each task, 95%)", "",
        table(report), "",
        *generation_markdown(report), *ood_markdown(report),
        "## Targets met (every seed)", "",
        "| method | var α −40% | 𝒰 −25% | mean α not falling | no task −1 pt |", "|---|---|---|---|---|"]
    for m in methods:
        ok = report["aggregate"][m]["meets_all_seeds"]
        lines.append(f"| {m} | " + " | ".join("yes" if ok[k] else "no" for k in ok) + " |")
    lines += ["", "## Per-task α (mean over seeds)", "",
              "| task | original | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    before = report["before"]["per_task"]["alpha"]
    for t in names:
        lines.append(f"| {t} | {before[t]:.4f} | " + " | ".join(
            f"{report['aggregate'][m]['per_task_alpha_after'][t]:.4f}" for m in methods) + " |")
    return "\n".join(lines) + "\n"


def _budget(report: dict) -> str:
    runs = sorted({s["candidates_run"] for s in report["selection"].values()})
    return "/".join(map(str, runs))


def _knobs(knobs: dict) -> str:
    return ", ".join(f"{k} = {v:g}" for k, v in knobs.items())


def _seed_row(method: str, agg: dict) -> str:
    iv = agg["seed_intervals"]

    def cell(key, scale=100.0, unit="%"):
        i = iv[key]
        if math.isnan(i["low"]):
            return f"{scale * i['mean']:+.1f}{unit}"
        return f"{scale * i['mean']:+.1f}{unit} [{scale * i['low']:+.1f}, {scale * i['high']:+.1f}]"

    return (f"| {method} | {cell('alpha_variance_change')} | {cell('U_ce_change')} | "
            f"{cell('mean_alpha_change', 100.0, '')} | {100 * agg['worst_alpha_change_min']:+.2f} |")


def plot(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["task_names"]
    methods = report["methods"]
    before = report["before"]["per_task"]["alpha"]
    order = sorted(names, key=lambda t: before[t])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 0.6 * len(names)), 8), sharex=True)
    x = list(range(len(order)))
    ax1.plot(x, [before[t] for t in order], "k-o", label="original drafter", linewidth=2)
    for m in methods:
        a = report["aggregate"][m]["per_task_alpha_after"]
        ax1.plot(x, [a[t] for t in order], "-o", markersize=3, label=m)
        ax2.plot(x, [100 * (a[t] - before[t]) for t in order], "-o", markersize=3, label=m)
    ax1.set_ylabel("held-out α = Σ min(p, q)")
    ax1.legend(fontsize=8)
    ax1.set_title(report["description"], fontsize=9)
    ax2.axhline(0, color="k", linewidth=0.8)
    ax2.axhline(-1, color="r", linewidth=0.8, linestyle="--")
    ax2.set_ylabel("Δα (points)")
    ax2.set_xticks(x)
    ax2.set_xticklabels(order, rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
