"""Compare s-CDF with its baselines under one budget, on held-out text.

``run_comparison(config, methods, seeds)`` loads the pair and the corpus once, measures
the original drafter on the held-out split with :mod:`specfair.teacher_forced` (the
verifier's held-out logits are computed once and shared), fine-tunes a fresh copy of the
drafter with every method and seed (same steps, batch and context: the same training
tokens), measures each result on the same held-out windows, and writes

* ``<prefix>.json``  every figure: per task and method alpha, CE, KL, speed-up, before and
  after; per run the spread figures and paired-bootstrap 95% intervals (windows resampled
  within each task) of the change in alpha variance and in U;
* ``<prefix>.md``    the table and per-task alpha;
* ``<prefix>.png``   per-task alpha before and after each method, and the changes.

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
from typing import Any

from . import corpus as corpus_mod
from ._util import resolve_device, write_json, write_text
from .scdf import ScdfConfig, ScdfError, evaluate_drafter, load_models, prepare_eval_cache, train
from .scdf_config import METHODS
from .spread import before_after, paired_bootstrap, relative_change, variance

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


def run_comparison(base: ScdfConfig, methods=METHODS, seeds=(0,), *, prefix: str = "scdf_compare",
                   work_dir: str | None = None, n_boot: int = 500) -> dict[str, Any]:
    """Run every method for every seed under ``base``'s budget; write the report in
    ``base.out_dir`` (files ``<prefix>.json/.md/.png``); fine-tuned drafters and
    checkpoints go under ``work_dir`` (default ``<out_dir>/<prefix>_runs``)."""
    methods = list(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ScdfError(f"methods must be among {METHODS}, got {methods}")
    out = Path(base.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(work_dir) if work_dir else out / f"{prefix}_runs"
    t0 = time.perf_counter()
    device = resolve_device(base.device, ScdfError)
    verifier, drafter0, tokenizer = load_models(base)
    corpus = corpus_mod.load_corpus(base.corpus_source, tasks=base.tasks, heldout_fraction=base.heldout_fraction,
                                    seed=base.corpus_seed, max_items_per_task=base.max_items_per_task,
                                    **base.corpus_options)
    names = [t for t in corpus.task_names if corpus.tasks[t].train]
    verifier.to(device)
    ec = prepare_eval_cache({}, base, verifier, tokenizer, corpus, names, device)
    ec["before"] = before = evaluate_drafter(base, drafter0.to(device), ec, device)
    n_ver = sum(p.numel() for p in verifier.parameters())
    n_dra = sum(p.numel() for p in drafter0.parameters())
    cost_ratio = base.cost_ratio if base.cost_ratio is not None else n_dra / n_ver

    runs = []
    for seed in seeds:
        for method in methods:
            cfg = dataclasses.replace(base, method=method, seed=seed, out_dir=str(work / f"{method}-seed{seed}"),
                                      evaluate=True, cost_ratio=cost_ratio, resume=False, stop_after=None)
            t1 = time.perf_counter()
            res = train(cfg, verifier=verifier, drafter=copy.deepcopy(drafter0), tokenizer=tokenizer,
                        corpus=corpus, eval_cache=ec)
            runs.append(_run_record(cfg, res, before, cost_ratio, n_boot, time.perf_counter() - t1))
            del res

    report = {
        "description": "s-CDF and baselines at equal steps and training tokens; held-out, teacher-forced, "
                       f"temperature {base.temperature:g}; speed-up S(alpha; K={base.num_draft}, "
                       f"c={cost_ratio:.4f})",
        "config": base.to_dict(), "methods": methods, "seeds": list(seeds), "task_names": names,
        "device": str(device), "cost_ratio": cost_ratio, "num_draft": base.num_draft,
        "heldout_tokens": before.tokens, "targets": TARGETS,
        "before": before.to_dict(base.num_draft, cost_ratio), "runs": runs,
        "aggregate": {m: _aggregate([r for r in runs if r["method"] == m], names) for m in methods},
        "seconds_total": time.perf_counter() - t0,
    }
    paths = {"json": out / f"{prefix}.json", "markdown": out / f"{prefix}.md", "png": out / f"{prefix}.png"}
    write_json(paths["json"], report)
    write_text(paths["markdown"], markdown(report))
    plot(report, paths["png"])
    report["paths"] = {k: str(v) for k, v in paths.items()}
    report["markdown_table"] = table(report)
    return report


def _run_record(cfg: ScdfConfig, res, before, cost_ratio: float, n_boot: int, seconds: float) -> dict:
    """One (method, seed) run: its held-out figures, paired-bootstrap intervals and targets."""
    fig = before_after(before, res.after, cfg.num_draft, cost_ratio)
    ci = {"alpha_variance_change": paired_bootstrap([before, res.after], _rel_change("alpha"), n_boot,
                                                    seed=cfg.seed),
          "U_ce_change": paired_bootstrap([before, res.after], _rel_change("ce"), n_boot, seed=cfg.seed)}
    return {"method": cfg.method, "seed": cfg.seed, "seconds": seconds,
            "figures": fig, "intervals": ci, "meets": _meets(fig),
            "drafter_temperature": res.report["drafter_temperature"],
            "tokens_per_task": res.report["tokens_per_task"],
            "training_tokens": res.report["training_tokens"],
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
        f"(training split), lr {cfg['lr']}, loss `{cfg['loss']}`, weights from `{cfg['weight_divergence']}`, "
        f"uniform mix {cfg['uniform_mix']}, device {report['device']}, seeds {report['seeds']}. "
        f"Held-out: {sum(report['heldout_tokens'].values())} tokens over {len(names)} tasks. "
        f"Total time {report['seconds_total'] / 60:.1f} min.", "",
        "Targets: var α −40% or better, 𝒰 −25% or better, mean α not falling, no task losing "
        "more than 1 point of α. Intervals: paired percentile bootstrap over held-out windows "
        "(resampled within each task), 95%.", "",
        table(report), "",
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
