"""The audit's drafting and verification variants (issues 13 §3-4 and 14).

* **Engine-style acceptance**: every task row gets both expected acceptances of the
  teacher-forced pass, ``alpha`` = sum min(p, q) (sampled drafts) and ``alpha_argmax`` =
  p(argmax q) (argmax drafts, vLLM's and SGLang's default), the one for the audit's drafting
  as ``expected_acceptance_drafting``, and the generation's accept-length histogram in the
  engines' format: entry j = verification steps that accepted exactly j drafts, j = 0..K
  (a step of the n-gram drafter that found no match counts under j = 0).
* **n-gram rows** (``--ngram``): the same prompts generated with the prompt-lookup drafter
  (`specfair.ngram`) and timed exactly as the model drafter (`measure_speedup`, same batches,
  repeats and seed); figures under ``ngram_*`` keys of each task row, and their spread.
* **Verify rule** (``--verify-method both``): the generation repeated under block
  verification; figures under ``block_*`` keys, and for each rule the spread of realised
  acceptance, tokens per step and measured speed-up across tasks (population variance,
  fastest/slowest ratio), with per-task gains block - token.

Spread uses `specfair.spread` (the same variance and max/min ratio as the main audit).
"""
from __future__ import annotations

import math

import numpy as np

from .ngram import NgramConfig
from .spread import max_min_ratio, variance

__all__ = ["VERIFY_METHOD_CHOICES", "DRAFT_CHOICES", "NgramConfig", "add_variants",
           "task_fields", "variant_fields", "variant_summary", "markdown_sections"]

VERIFY_METHOD_CHOICES = ("token", "block", "both")
DRAFT_CHOICES = ("sample", "argmax")
_GEN_KEYS = ("realised_acceptance", "tokens_per_step", "measured_speedup")


def _histogram(gen: dict, i: int) -> list[int]:
    return [int(x) for x in gen["stats"]["per_task"]["accept_length_histogram"][i]]


def task_fields(draft: str, tfr, t: str, i: int, gen: dict | None) -> dict:
    """Per task: both teacher-forced expected acceptances, the drafting's own, the histogram."""
    a, a_max = tfr.alpha[t], tfr.alpha_argmax.get(t)
    r = {"draft": draft, "alpha_argmax": a_max,
         "expected_acceptance_drafting": a_max if draft == "argmax" else a}
    if gen:
        r["accept_length_histogram"] = _histogram(gen, i)
    return r


def variant_fields(prefix: str, gen: dict, i: int) -> dict:
    """One generation variant's per-task figures under ``prefix_`` keys."""
    g = gen["per_task"][i]
    return {f"{prefix}_realised_acceptance": g["realised_acceptance"],
            f"{prefix}_tokens_per_step": g["tokens_per_step"],
            f"{prefix}_measured_speedup": g["measured_speedup"],
            f"{prefix}_speculative_seconds": g["spec_seconds"],
            f"{prefix}_verifier_seconds": g["verifier_seconds"],
            f"{prefix}_accept_length_histogram": _histogram(gen, i)}


def add_variants(cfg, rows: list[dict], tfr, tasks, gen, generate, say) -> None:
    """Engine-style acceptance fields on every row (``cfg``: the `specfair.audit.AuditConfig`);
    with generation, the block-verification and n-gram runs (``generate(**variant)``) as
    ``block_*`` / ``ngram_*`` fields."""
    for i, (r, t) in enumerate(zip(rows, tasks)):
        r.update(task_fields(cfg.draft, tfr, t, i, gen))
    if gen is None:
        return
    variants = []
    if cfg.verify_method == "both":
        variants.append(("block", {"verify_method": "block"}))
    if cfg.ngram:
        variants.append(("ngram", {"ngram": NgramConfig(cfg.ngram_max, cfg.ngram_min), "draft": "sample"}))
    for prefix, v in variants:
        say(f"speculative generation again: {prefix} ...")
        g = generate(**v)
        for i, r in enumerate(rows):
            r.update(variant_fields(prefix, g, i))


def _spread(rows: list[dict], tasks: list[str], prefix: str) -> dict:
    out = {}
    for k in _GEN_KEYS:
        x = np.array([_num(r.get(f"{prefix}{k}")) for r in rows])
        out[k] = {"mean": float(np.nanmean(x)) if np.isfinite(x).any() else math.nan,
                  "variance": variance(x), "max_min_ratio": max_min_ratio(x)}
    speed = np.array([_num(r.get(f"{prefix}measured_speedup")) for r in rows])
    if np.isfinite(speed).any():
        out["fastest_task"] = tasks[int(np.nanargmax(speed))]
        out["slowest_task"] = tasks[int(np.nanargmin(speed))]
    return out


def variant_summary(rows: list[dict], tasks: list[str], verify_method: str, ngram: bool) -> dict:
    """Spread of the generation figures per verify rule and per drafter, and per-task gains."""
    out: dict = {}
    if verify_method == "both":
        out["verify_methods"] = {"token": _spread(rows, tasks, ""), "block": _spread(rows, tasks, "block_")}
        out["block_minus_token"] = {
            r["task"]: {k: _num(r.get(f"block_{k}")) - _num(r.get(k)) for k in _GEN_KEYS} for r in rows}
    if ngram:
        out["ngram"] = _spread(rows, tasks, "ngram_")
        out["model_drafter"] = _spread(rows, tasks, "")
    return out


def _num(v) -> float:
    return math.nan if v is None else float(v)


def _fmt(v, nd: int = 3) -> str:
    v = _num(v)
    return "–" if math.isnan(v) else f"{v:.{nd}f}"


def _variant_table(report, title: str, variants: list[tuple[str, str]]) -> list[str]:
    L = [f"## {title}", "", "| task | " + " | ".join(f"{name}: acceptance | tokens/step | measured S"
                                                    for name, _ in variants) + " |",
         "|---|" + "---|---|---|" * len(variants)]
    for t in report.tasks:
        cells = []
        for _, p in variants:
            cells += [_fmt(t.get(f"{p}realised_acceptance")), _fmt(t.get(f"{p}tokens_per_step"), 2),
                      _fmt(t.get(f"{p}measured_speedup"), 2)]
        L.append(f"| {t['task']} | " + " | ".join(cells) + " |")
    L += ["", "| spread | " + " | ".join(name for name, _ in variants) + " |", "|---|" + "---|" * len(variants)]
    for k, label in (("realised_acceptance", "acceptance"), ("tokens_per_step", "tokens/step"),
                     ("measured_speedup", "measured S")):
        for stat in ("mean", "variance", "max_min_ratio"):
            vals = [_variant_stat(report, title, p, k, stat) for _, p in variants]
            L.append(f"| {label} {stat.replace('_', '/')} | " + " | ".join(_fmt(v, 4) for v in vals) + " |")
    L.append("")
    return L


def _variant_stat(report, title: str, prefix: str, key: str, stat: str) -> float:
    d = report.summary["drafting"]
    if title.startswith("Verify"):
        block = d["verify_methods"]["block" if prefix == "block_" else "token"]
        return block[key][stat]
    return (d["ngram"] if prefix == "ngram_" else d["model_drafter"])[key][stat]


def markdown_sections(report) -> list[str]:
    """Markdown of the variants present in ``report`` (none: an empty list)."""
    d = report.summary.get("drafting") or {}
    L: list[str] = []
    if "verify_methods" in d:
        L += _variant_table(report, "Verify rule: token-by-token vs block verification",
                            [("token", ""), ("block", "block_")])
    if "ngram" in d:
        L += _variant_table(report, "Drafter: model vs n-gram (prompt lookup)", [("model", ""), ("n-gram", "ngram_")])
    if report.tasks and "alpha_argmax" in report.tasks[0]:
        L += ["## Engine-style acceptance", "",
              "| task | Σ min(p, q) | p(argmax q) | accept-length histogram (j = 0..K) |", "|---|---|---|---|"]
        for t in report.tasks:
            h = t.get("accept_length_histogram")
            L.append(f"| {t['task']} | {_fmt(t['alpha'])} | {_fmt(t.get('alpha_argmax'))} | "
                     f"{' '.join(map(str, h)) if h else '–'} |")
        L.append("")
    return L
