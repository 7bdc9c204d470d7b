"""The audit's report: the `AuditReport` record and its renderings (terminal table,
Markdown, CSV, two plots), and writing them all at once into an output directory."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._util import json_safe
from .audit_drafting import markdown_sections
from .spread import speedup_lower_bound

__all__ = ["AuditReport", "float_or_nan", "write_report"]


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
        cols = ["task", "alpha", "KL", "CE", "H(p)", "S pred", "S r=1"]
        if gen:
            cols += ["acc gen", "tok/step", "S meas"]
        rows = []
        for t in sorted(self.tasks, key=lambda t: -_num(t.get("measured_speedup", t["predicted_speedup"]))):
            r = [t["task"], _f(t["alpha"]), _f(t["kl"]), _f(t["ce"]), _f(t["entropy"]),
                 _f(t["predicted_speedup"], 2), _f(t.get("predicted_speedup_rk1"), 2)]
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
        out.append("variances corrected for within-task noise (audit.md says how); S pred = S(alpha; K, c, r_K), "
                   f"r_K = {_f(s.get('verify_cost'), 2)}; S r=1 = PAPER.md's S(alpha; K, c)")
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
        L.append("| figure | value | 95% CI | uncorrected |")
        L.append("|---|---|---|---|")
        for key, label in (("U_ce", "𝒰 = variance of per-task CE"), ("U_kl", "variance of per-task KL"),
                           ("alpha_variance", "variance of per-task α"),
                           ("alpha_max_min_ratio", "max/min per-task α"),
                           ("predicted_speedup_variance", "variance of predicted speed-up"),
                           ("predicted_speedup_max_min_ratio", "max/min predicted speed-up"),
                           ("measured_speedup_variance", "variance of measured speed-up"),
                           ("measured_speedup_max_min_ratio", "max/min measured speed-up")):
            if key in u:
                L.append(f"| {label} | {_f(u[key]['value'], 5)} | {_fci(u[key]['ci95'], 5)} | "
                         f"{_f(u[key].get('uncorrected'), 5)} |")
        for name, c in s["correlations"].items():
            L.append(f"| Spearman {name} | {_f(c['rho'], 3)} | {_fci(c['ci95'], 3)} | |")
        L.append("")
        L.append(f"Variances across tasks: {s['spread_estimator']['variances']}. Ratios: "
                 f"{s['spread_estimator']['ratios']}. Per task: {s['spread_estimator']['per_task']}.")
        L += [""] + [f"**Warning:** {w}" for w in s.get("warnings", [])] + ([""] if s.get("warnings") else [])
        L.append(_break_even_sentence(s))
        L.append("")
        L += self._task_table(gen)
        L.append("")
        L += markdown_sections(self)
        L.append(f"Teacher-forced figures over up to {cfg['teacher_forced_tokens']} held-out tokens per task; "
                 f"cost ratio c = {_f(s['cost_ratio'], 3)} ({s['cost_ratio_source']}); verifier cost of "
                 f"K + 1 = {s['num_draft_for_prediction'] + 1} tokens r_K = {_f(s.get('verify_cost'), 3)} "
                 "(measured, relative to one token). Predicted S = S(α; K, c, r_K) = E[tokens per step] / "
                 "(K c + r_K); S (r_K = 1) is PAPER.md's S(α; K, c), which assumes scoring K + 1 tokens costs "
                 "the verifier as much as one. "
                 "Plots: `acceptance_speedup.png`, `divergence_speedup.png`. Every figure: `audit.json`.")
        return "\n".join(L) + "\n"

    def _task_table(self, gen: bool) -> list[str]:
        """The per-task Markdown table, with prediction against measurement when generated."""
        head = "| task | α | α 95% CI | KL | CE | H(p) | predicted S | S (r_K = 1) | α − break-even |"
        sep = "|---|---|---|---|---|---|---|---|---|"
        if gen:
            head += " realised acceptance | tokens/step | measured S | measured ÷ predicted | measured ÷ S (r_K = 1) |"
            sep += "---|---|---|---|---|"
        L = [head, sep]
        for t in self.tasks:
            r = (f"| {t['task']} | {_f(t['alpha'])} | {_fci(t['alpha_ci95'])} | {_f(t['kl'])} | {_f(t['ce'])} | "
                 f"{_f(t['entropy'])} | {_f(t['predicted_speedup'], 2)} | {_f(t.get('predicted_speedup_rk1'), 2)} | "
                 f"{_margin(t.get('acceptance_margin'))} |")
            if gen:
                r += (f" {_f(t.get('realised_acceptance'))} | {_f(t.get('tokens_per_step'), 2)} | "
                      f"{_f(t.get('measured_speedup'), 2)} | {_f(t.get('measured_over_predicted'), 2)} | "
                      f"{_f(t.get('measured_over_predicted_rk1'), 2)} |")
            L.append(r)
        return L

    def csv(self) -> str:
        """One row per task; a list of ints (an accept-length histogram) as "n0;n1;...;nK"."""
        keys = list(dict.fromkeys(k for t in self.tasks for k in t if not isinstance(t[k], dict)
                                  and not (isinstance(t[k], list) and not _int_list(t[k]))))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        for t in self.tasks:
            w.writerow({k: ";".join(map(str, t[k])) if isinstance(t.get(k), list) else t.get(k) for k in keys})
        return buf.getvalue()


def _break_even_sentence(s: dict) -> str:
    """Where speculation pays, for the Markdown summary."""
    K, even = s["num_draft_for_prediction"], s.get("break_even_acceptance")
    if even is None or not s.get("speculation_can_pay", True) or (isinstance(even, float) and math.isinf(even)):
        return (f"**Speculation cannot pay at K = {K}** with the measured costs: K c + r_K = "
                f"{_f(K * s['cost_ratio'] + s.get('verify_cost', 1.0), 2)} verifier steps per step is more than the "
                f"K + 1 = {K + 1} tokens even α = 1 would give; the verifier alone is faster for every task.")
    return (f"Break-even acceptance at K = {K}: **α = {_f(even)}** (S(α; K, c, r_K) = 1 with the measured c and "
            "r_K); tasks below it are slower with speculation than with the verifier alone "
            "(column α − break-even).")


def _margin(v) -> str:
    """alpha - break-even, "cannot pay" when the break-even is past alpha = 1."""
    return "cannot pay" if v == -math.inf else _f(v)


def _int_list(v: list) -> bool:
    return all(isinstance(x, int) and not isinstance(x, bool) for x in v)


def float_or_nan(v) -> float:
    """A figure that may be missing (None) as a float."""
    return math.nan if v is None else float(v)


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


def write_report(report: AuditReport, out_dir: Path) -> dict:
    """Write every file into a temporary directory beside ``out_dir``, then move them in."""
    tmp = Path(tempfile.mkdtemp(prefix=".specfair-audit-", dir=out_dir))
    try:
        (tmp / "audit.json").write_text(json.dumps(json_safe(report.to_dict()), indent=2, allow_nan=False) + "\n",
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
    plt = _plt()
    rows = sorted(report.tasks, key=lambda r: -r["alpha"])
    names = [r["task"] for r in rows]
    x = np.arange(len(rows))
    gen = any(r.get("measured_speedup") is not None for r in rows)
    fig, axes = plt.subplots(2, 1, figsize=(max(7, 0.45 * len(rows) + 2), 7), sharex=True)
    ax = axes[0]
    a = np.array([r["alpha"] for r in rows])
    lo = np.nan_to_num(a - np.array([float_or_nan(r["alpha_ci95"][0]) for r in rows]))   # n/a: no bar
    hi = np.nan_to_num(np.array([float_or_nan(r["alpha_ci95"][1]) for r in rows]) - a)
    w = 0.4 if gen else 0.8
    ax.bar(x - (w / 2 if gen else 0), a, w, yerr=[lo, hi], capsize=2, color="#4C72B0",
           label="expected acceptance α (teacher-forced)")
    if gen:
        ax.bar(x + w / 2, [float_or_nan(r.get("realised_acceptance")) for r in rows], w, color="#DD8452",
               label="realised acceptance (generation)")
    ax.set_ylabel("acceptance")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"Who gets the speed-up: {_short(report.config['drafter_resolved'])} drafting for "
                 f"{_short(report.config['verifier_resolved'])}", fontsize=10)
    ax = axes[1]
    ax.bar(x - (w / 2 if gen else 0), [r["predicted_speedup"] for r in rows], w, color="#55A868",
           label=f"predicted S(α; K, c, r_K), c = {report.summary['cost_ratio']:.2f}, "
                 f"r_K = {report.summary.get('verify_cost', 1.0):.2f}")
    if gen:
        ax.bar(x + w / 2, [float_or_nan(r.get("measured_speedup")) for r in rows], w, color="#C44E52",
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
    plt = _plt()
    rows = report.tasks
    kl = np.array([r["kl"] for r in rows])
    gen = any(r.get("measured_speedup") is not None for r in rows)
    s = report.summary
    K, c, r_k = s["num_draft_for_prediction"], s["cost_ratio"], s.get("verify_cost", 1.0)
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(kl, [r["predicted_speedup"] for r in rows], color="#55A868", label="predicted S(α; K, c, r_K)")
    if gen:
        ax.scatter(kl, [float_or_nan(r.get("measured_speedup")) for r in rows], color="#C44E52", marker="s",
                   label="measured")
    for r in rows:
        y = r.get("measured_speedup") if gen and r.get("measured_speedup") is not None else r["predicted_speedup"]
        ax.annotate(r["task"], (r["kl"], y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    xs = np.linspace(0, max(float(np.nanmax(kl)) * 1.1, 0.1), 200)
    ax.plot(xs, speedup_lower_bound(xs, K, c, r_k), color="k", lw=1,
            label=f"bound S(1 − √(KL/2); K, c, r_K), r_K = {r_k:.2f} (Pinsker + Jensen)")
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
