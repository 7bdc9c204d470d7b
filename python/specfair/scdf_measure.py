"""What `specfair.scdf_compare` measures beside the teacher-forced held-out figures: the
**measured** generative speed-up of each drafter, and its figures on a second,
**out-of-domain** corpus.  Neither feeds a choice: both are measured only for the
original drafter and the drafters chosen on validation, after every choice is made.

Generation.  `audit.generative` is the audit's own timing path (`specfair audit`):
speculative generation from prompts cut from the corpus's held-out paragraphs (the same
prompts for every drafter), then verifier-only generation of the same outputs, both timed
with `baseline.measure_speedup` (each request alone, interleaved repeats, medians).  Per
task: the measured speed-up (verifier-only seconds / speculative seconds), the realised
acceptance and tokens per verifier call; over tasks the measured disparity, fastest ÷
slowest task (`spread.max_min_ratio`).  The defaults (`MeasureOptions`: 4 prompts of 24
tokens per task, 16 new tokens, 2 repeats) keep a CPU comparison affordable; timings on a
shared machine are noisy, so small differences of disparity are within noise.  The
verifier is frozen (fingerprinted, checked bit for bit), so every drafter's output
distribution is the verifier's: only the speed changes.

Out of domain.  After fine-tuning on the training corpus, the drafters are measured
teacher-forced on a second corpus, by default Django's gettext catalogues (the ``django``
source of `specfair.corpus`) when Django is installed.  None of its text was trained on or
used for a choice, so all of it is evaluation text (loaded with held-out fraction 1, at
most ``eval_tokens_per_task`` tokens per task).  Tasks are matched by name; a training task
whose name the second corpus lacks takes its alias in `OOD_ALIASES` (zh_CN -> zh_Hans),
and tasks with no counterpart are left out (the report lists them).  The figures are
`spread.before_after`'s: per task alpha before and after, the change in the variance of
per-task alpha, in 𝒰 and in mean alpha; the gap "closes" out of domain when the variance of
per-task alpha falls.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

from . import audit
from . import corpus as corpus_mod
from ._util import status_printer
from .scdf_config import ScdfConfig, ScdfError
from .scdf_eval import evaluate_drafter, prepare_eval_cache
from .spread import before_after, max_min_ratio

__all__ = ["MeasureOptions", "OOD_ALIASES", "generation_config", "measure_generation", "generation_change",
           "resolve_ood", "load_ood_corpus", "OodEval", "generation_markdown", "ood_markdown"]

OOD_ALIASES = {"zh_CN": "zh_Hans", "zh_TW": "zh_Hant"}
"""Training task name -> the second corpus's name for it, used when the exact name is absent."""


@dataclass
class MeasureOptions:
    """What `scdf_compare.run_comparison` measures besides teacher-forced held-out figures."""

    generate: bool = True              # measured generative speed-up, before and after
    num_prompts: int = 4               # held-out prompts per task
    prompt_tokens: int = 24            # tokens of each prompt
    max_new_tokens: int = 16
    timing_repeats: int = 2
    generate_seeds: list[int] | None = None   # seeds whose chosen drafters are timed; None: every seed
    ood_corpus: str | None = "auto"    # a specfair.corpus source; "auto": django if installed; None: skip
    ood_options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- generation
def generation_config(base: ScdfConfig, opts: MeasureOptions) -> audit.AuditConfig:
    """The audit settings of the timed generation (validated; bad values are ScdfErrors)."""
    acfg = audit.AuditConfig(num_prompts=opts.num_prompts, prompt_tokens=opts.prompt_tokens,
                             max_new_tokens=opts.max_new_tokens, timing_repeats=opts.timing_repeats,
                             num_draft=base.num_draft, temperature=base.temperature, device=base.device,
                             context_length=max(base.context_length, opts.prompt_tokens + 1), seed=base.seed,
                             generation_batch_size=1, progress=base.progress, out=None)
    try:
        acfg.validate()
    except audit.AuditError as e:
        raise ScdfError(f"generation: {e}") from None
    return acfg


def measure_generation(acfg: audit.AuditConfig, tokenizer, corpus, names: Sequence[str], drafter,
                       verifier) -> dict[str, Any]:
    """One drafter's measured generation on the held-out prompts (`audit.generative`)."""
    try:
        gen = audit.generative(acfg, tokenizer, corpus, list(names), drafter, verifier)
    except audit.AuditError as e:
        raise ScdfError(f"generation: {e}") from None
    per_task = {t: {"measured_speedup": g["measured_speedup"], "realised_acceptance": g["realised_acceptance"],
                    "tokens_per_step": g["tokens_per_step"], "generated_tokens": g["tokens"],
                    "speculative_seconds": g["spec_seconds"], "verifier_seconds": g["verifier_seconds"]}
                for t, g in zip(names, (gen["per_task"][i] for i in range(len(names))))}
    speedups = [v["measured_speedup"] for v in per_task.values()]
    return {"per_task": per_task, "measured_speedup": gen["measured_speedup"], "cost_ratio": gen["cost_ratio"],
            "disparity": max_min_ratio(speedups),
            "fastest_task": max(per_task, key=lambda t: per_task[t]["measured_speedup"]),
            "slowest_task": min(per_task, key=lambda t: per_task[t]["measured_speedup"])}


def generation_change(before: dict, after: dict) -> dict[str, Any]:
    """Measured figures of one fine-tuned drafter beside the original's."""
    return {"after": after, "disparity_before": before["disparity"], "disparity_after": after["disparity"],
            "disparity_smaller": after["disparity"] < before["disparity"],
            "measured_speedup_change": after["measured_speedup"] - before["measured_speedup"],
            "per_task": {t: {"measured_speedup_before": b["measured_speedup"],
                             "measured_speedup_after": after["per_task"][t]["measured_speedup"],
                             "realised_acceptance_before": b["realised_acceptance"],
                             "realised_acceptance_after": after["per_task"][t]["realised_acceptance"]}
                         for t, b in before["per_task"].items()}}


# ----------------------------------------------------------------------------- out of domain
def resolve_ood(name: str | None, say=None) -> str | None:
    """The out-of-domain source to use: ``"auto"`` is ``django`` when its catalogues are on
    this machine, else None (with a note through ``say``); ``"none"``/None: skipped."""
    say = say or status_printer()
    if name is None or name == "none":
        return None
    if name != "auto":
        return name
    try:
        corpus_mod.available_tasks("django")
    except (corpus_mod.SourceNotAvailableError, corpus_mod.CorpusError) as e:
        say(f"note: no out-of-domain evaluation (--ood-corpus auto wants the django source): {e}")
        return None
    return "django"


def load_ood_corpus(source: str, options: dict, names: Sequence[str]):
    """The second corpus, every item held out, its tasks renamed to the training tasks they
    match -> (corpus, {training task: source task}, [training tasks without a match])."""
    try:
        offered = set(corpus_mod.available_tasks(source, **options))
    except (corpus_mod.SourceNotAvailableError, corpus_mod.CorpusError) as e:
        raise ScdfError(f"ood corpus {source!r}: {e}") from None
    match = {}
    for t in names:
        if t in offered:
            match[t] = t
        elif OOD_ALIASES.get(t) in offered:
            match[t] = OOD_ALIASES[t]
    if not match:
        raise ScdfError(f"ood corpus {source!r} has none of the training tasks {list(names)}")
    try:
        c = corpus_mod.load_corpus(source, tasks=list(match.values()), heldout_fraction=1.0, **options)
    except (corpus_mod.SourceNotAvailableError, corpus_mod.CorpusError) as e:
        raise ScdfError(f"ood corpus {source!r}: {e}") from None
    match = {t: s for t, s in match.items() if s in c.tasks and c.tasks[s].heldout}
    c.tasks = {t: c.tasks[s] for t, s in match.items()}
    return c, match, [t for t in names if t not in match]


class OodEval:
    """Teacher-forced figures on the out-of-domain corpus: loaded (and checked) at once;
    ``prepare`` computes its windows, verifier logits and the original drafter's figures,
    then ``figures(cfg, drafter, c)`` measures one drafter."""

    def __init__(self, base: ScdfConfig, source: str, options: dict, names, device):
        self.base, self.device, self.source = base, device, source
        self.corpus, self.match, self.missing = load_ood_corpus(source, options, names)
        self.names = list(self.match)
        self.ec, self.before = None, None

    def prepare(self, verifier, tokenizer, drafter0) -> None:
        """The windows, the verifier's logits and the original drafter's figures (once)."""
        if self.before is None:
            self.ec = prepare_eval_cache({"corpus": self.source}, self.base, verifier, tokenizer, self.corpus,
                                         self.names, self.device, split="heldout")
            self.before = evaluate_drafter(self.base, drafter0, self.ec, self.device)

    def figures(self, cfg: ScdfConfig, drafter, cost_ratio: float) -> dict:
        after = evaluate_drafter(cfg, drafter, self.ec, self.device)
        return before_after(self.before, after, cfg.num_draft, cost_ratio)

    def record(self, cost_ratio: float) -> dict:
        return {"source": self.source, "task_match": self.match, "tasks_missing": self.missing,
                "tokens": self.before.tokens, "before": self.before.to_dict(self.base.num_draft, cost_ratio)}


def ood_aggregate(runs: list[dict], names: Sequence[str]) -> dict:
    """One method's out-of-domain figures over its seeds."""
    keys = ("alpha_variance_change", "U_ce_change", "mean_alpha_change", "worst_alpha_change")
    figs = [r["ood"] for r in runs]
    return {**{f"{k}_mean": sum(f[k] for f in figs) / len(figs) for k in keys},
            **{f"{k}_min": min(f[k] for f in figs) for k in keys},
            **{f"{k}_max": max(f[k] for f in figs) for k in keys},
            "gap_closes_all_seeds": all(f["alpha_variance_change"] < 0 for f in figs),
            "per_task_alpha_after": {t: sum(f["per_task"][t]["alpha_after"] for f in figs) / len(figs)
                                     for t in names}}


def generation_aggregate(runs: list[dict], names: Sequence[str]) -> dict:
    """One method's measured generation over its timed seeds (None when none was timed)."""
    gens = [r["generation"] for r in runs if r.get("generation")]
    n = len(gens)
    if not n:
        return None
    return {"seeds": [r["seed"] for r in runs if r.get("generation")],
            "disparity_after_mean": sum(g["disparity_after"] for g in gens) / n,
            "disparity_after": [g["disparity_after"] for g in gens],
            "disparity_smaller_all_seeds": all(g["disparity_smaller"] for g in gens),
            "measured_speedup_after_mean": sum(g["after"]["measured_speedup"] for g in gens) / n,
            "per_task_measured_speedup_after": {
                t: sum(g["per_task"][t]["measured_speedup_after"] for g in gens) / n for t in names}}


# ----------------------------------------------------------------------------- markdown
def generation_markdown(report: dict) -> list[str]:
    """The measured-generation sections of the comparison's Markdown (empty when skipped)."""
    g0 = report.get("generation_before")
    if not g0:
        return []
    o = report["measure"]
    agg = report["aggregate"]
    lines = ["## Measured generation (held-out prompts, the audit's timing path)", "",
             f"`audit.generative`: per task {o['num_prompts']} held-out prompts of {o['prompt_tokens']} tokens, "
             f"{o['max_new_tokens']} new tokens, each request alone, {o['timing_repeats']} interleaved "
             f"repeat{'s (medians)' if o['timing_repeats'] != 1 else ''}; measured speed-up = verifier-only "
             "seconds / speculative seconds for the same outputs. "
             "The verifier is frozen (fingerprint checked bit for bit: "
             f"{'unchanged' if report.get('verifier_unchanged') else 'CHANGED'}), so the output distribution "
             "is the verifier's for every drafter; only the speed changes. Disparity = fastest ÷ slowest task.", "",
             "| method | disparity before | disparity after (per seed) | mean after | smaller (every seed) | "
             "overall measured speed-up after |", "|---|---|---|---|---|---|",
             f"| original drafter | {g0['disparity']:.3f} | – | – | – | {g0['measured_speedup']:.3f} |"]
    methods = [m for m in report["methods"] if agg[m]["generation"]]
    for m in methods:
        a = agg[m]["generation"]
        lines.append(f"| {m} | {g0['disparity']:.3f} | {' / '.join(f'{x:.3f}' for x in a['disparity_after'])} | "
                     f"{a['disparity_after_mean']:.3f} | {'yes' if a['disparity_smaller_all_seeds'] else 'no'} | "
                     f"{a['measured_speedup_after_mean']:.3f} |")
    seeds = sorted({s for m in methods for s in agg[m]["generation"]["seeds"]})
    lines += ["", f"Per-task measured speed-up (mean over timed seeds {seeds}):", "",
              "| task | original | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for t in report["task_names"]:
        lines.append(f"| {t} | {g0['per_task'][t]['measured_speedup']:.3f} | " + " | ".join(
            f"{agg[m]['generation']['per_task_measured_speedup_after'][t]:.3f}" for m in methods) + " |")
    return lines + [""]


def ood_markdown(report: dict) -> list[str]:
    """The out-of-domain sections of the comparison's Markdown (a note when skipped)."""
    ood = report.get("ood")
    if not ood:
        return ["## Out of domain", "", report.get("ood_note") or "Not measured.", ""]
    b = ood["before"]["summary"]
    names = list(ood["task_match"])
    lines = [f"## Out of domain: `{ood['source']}` (teacher-forced, nothing of it trained on or chosen on)", "",
             f"{sum(ood['tokens'].values())} tokens over {len(names)} tasks"
             + (f"; no counterpart for {', '.join(ood['tasks_missing'])}" if ood["tasks_missing"] else "")
             + (f"; matched by alias: {', '.join(f'{t}→{s}' for t, s in ood['task_match'].items() if t != s)}"
                if any(t != s for t, s in ood["task_match"].items()) else "")
             + f". Original drafter: mean α {b['mean_alpha']:.4f}, var α {b['alpha_variance']:.2e}, "
             f"𝒰 {b['U_ce']:.2e}.", "",
             "| method | Δ var α (mean; min / max) | Δ𝒰 (mean) | Δ mean α (pt) | worst Δα (pt, worst seed) | "
             "gap closes (every seed) |", "|---|---|---|---|---|---|"]
    for m in report["methods"]:
        a = report["aggregate"][m]["ood"]
        lines.append(f"| {m} | {100 * a['alpha_variance_change_mean']:+.1f}% "
                     f"({100 * a['alpha_variance_change_min']:+.1f} / {100 * a['alpha_variance_change_max']:+.1f}) | "
                     f"{100 * a['U_ce_change_mean']:+.1f}% | "
                     f"{100 * a['mean_alpha_change_mean']:+.2f} | {100 * a['worst_alpha_change_min']:+.2f} | "
                     f"{'yes' if a['gap_closes_all_seeds'] else 'no'} |")
    lines += ["", "| task | original | " + " | ".join(report["methods"]) + " |",
              "|---|---|" + "---|" * len(report["methods"])]
    for t in names:
        lines.append(f"| {t} | {ood['before']['per_task']['alpha'][t]:.4f} | " + " | ".join(
            f"{report['aggregate'][m]['ood']['per_task_alpha_after'][t]:.4f}" for m in report["methods"]) + " |")
    return lines + [""]
