"""`specfair` command line: every subcommand's arguments live here, with defaults read
from the config dataclasses of the modules that do the work.

    specfair audit [--drafter X --verifier Y] [...]   who gets how much speed-up, on the shipped
                                                      pair and corpus unless told otherwise
    specfair scdf [--method scdf|uniform|balanced|temperature] [--compare] [...]
                                            fine-tune the drafter where it is slowest (s-CDF)
    specfair train-pair --out DIR [...]     train a drafter/verifier pair
    specfair corpus [SOURCE] [...]          per-task split sizes of a task corpus
    specfair demo [demo options]            per-task demonstration of verify (specfair_kernels.demo)
    specfair [demo options]                 no subcommand: the demo

``python -m specfair ...`` is the same (and ``torchrun -m specfair scdf ...`` runs s-CDF on
several ranks).  Errors a user can fix (unknown language, unwritable output directory,
missing corpus, a GPU asked for where there is none, a pair that cannot be loaded) print one
``error:`` line and exit with status 2; nothing half-written is left in the output directory.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from specfair_kernels.demo import main as demo_main

from ._util import parse_key_value
from .audit import AuditConfig, AuditError, AuditWarning
from .audit import run as run_audit
from .audit_drafting import DRAFT_CHOICES, VERIFY_METHOD_CHOICES
from .corpus import CorpusError, SourceNotAvailableError, list_sources, load_corpus
from .corpus_sources import DEFAULT_SOURCE
from .scdf import ScdfConfig, ScdfError, train
from .scdf_compare import run_comparison
from .scdf_config import LOSS_KINDS, METHODS, SHARDS, WEIGHT_KINDS
from .scdf_measure import MeasureOptions
from .train_pair import TrainPairError, preset, train_pair

SUBCOMMANDS = ("demo", "train-pair", "audit", "scdf", "corpus")
USER_ERRORS = (AuditError, ScdfError, TrainPairError, CorpusError, SourceNotAvailableError, FileNotFoundError)


def _option(text: str):
    return parse_key_value(text, argparse.ArgumentTypeError)


def _comma_list(text: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, e.g. en,fr,ru")
    return items


def _task_loss(text: str) -> tuple[str, str]:
    task, sep, kind = text.partition("=")
    if not sep or not task.strip() or kind.strip() not in LOSS_KINDS:
        raise argparse.ArgumentTypeError(f"expected TASK=OBJECTIVE with OBJECTIVE one of {LOSS_KINDS}, got {text!r}")
    return task.strip(), kind.strip()


def _search_values(text: str) -> tuple[str, list[float]]:
    key, sep, vals = text.partition("=")
    try:
        values = [float(v) for v in vals.split(",") if v.strip()]
    except ValueError:
        values = []
    if not sep or not key.strip() or not values:
        raise argparse.ArgumentTypeError(f"expected KNOB=V1,V2,... with numbers, got {text!r}")
    return key.strip(), values


def _corpus_arguments(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("--corpus", default=default,
                   help="specfair.corpus source: default (Debian installation guide), django, mgsm, jsonl, csv")
    p.add_argument("--corpus-option", action="append", default=[], type=_option, metavar="KEY=VALUE",
                   help="corpus source option, e.g. path=data.jsonl, root=DIR or drop_untranslated=false "
                        "(repeatable)")


def _model_placement_arguments(p: argparse.ArgumentParser, device_map: bool) -> None:
    p.add_argument("--no-cache", action="store_true",
                   help="dequantise GGUF files at every load and keep no dense copy (default: cached in "
                        "$SPECFAIR_CACHE/gguf or ~/.cache/specfair/gguf, keyed by the file's SHA-256)")
    if device_map:
        p.add_argument("--device-map", choices=["auto", "balanced", "balanced_low_0", "sequential"],
                       help="spread each model over the GPUs (and the CPU) with accelerate, for models larger "
                            "than one device; with --device cpu every layer stays on the CPU")


def _add_audit(sub) -> None:
    d = AuditConfig()
    au = sub.add_parser(
        "audit", help="fairness audit of speculative decoding: per-task acceptance, speed-up, divergence",
        description="Who gets how much speed-up from speculative decoding, why, and how unfair it is. "
                    "Without arguments: the shipped default pair on the default corpus (19 languages), "
                    "on the CPU, in a few minutes.")
    au.add_argument("--drafter", help="drafter: hub name, local directory or GGUF file (default: the shipped pair)")
    au.add_argument("--verifier", help="verifier: hub name, local directory or GGUF file (default: the shipped pair)")
    au.add_argument("--gguf-file", help="GGUF file name inside --drafter/--verifier (transformers' gguf_file=)")
    _corpus_arguments(au, d.corpus)
    au.add_argument("--tasks", type=_comma_list, help="comma-separated tasks (languages); default: all")
    au.add_argument("--num-prompts", type=int, default=d.num_prompts, help="prompts per task for generation")
    au.add_argument("--prompt-tokens", type=int, default=d.prompt_tokens, help="tokens per prompt")
    au.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="tokens generated per prompt")
    au.add_argument("--num-draft", default=str(d.num_draft), help="draft length K, or auto (default %(default)s)")
    au.add_argument("--temperature", type=float, default=d.temperature, help="sampling temperature, 0 = greedy")
    au.add_argument("--teacher-forced-tokens", type=int, default=d.teacher_forced_tokens,
                    help="held-out tokens per task for the teacher-forced pass (default %(default)s)")
    au.add_argument("--context-length", type=int, default=d.context_length,
                    help="window length of the teacher-forced pass (default %(default)s)")
    au.add_argument("--no-generation", action="store_true",
                    help="teacher-forced figures only (no generation, no measured speed-up)")
    au.add_argument("--generation-batch-size", type=int, default=d.generation_batch_size,
                    help="prompts per generate call (default %(default)s: every request timed alone, the latency "
                         "a user feels; 0: all of a task's prompts in one batch)")
    au.add_argument("--repeats", type=int, default=d.timing_repeats,
                    help="interleaved timing repeats per task; times are their medians (default %(default)s)")
    au.add_argument("--device", default=d.device, help="cpu (default) or cuda[:N]")
    au.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="model dtype (default: as saved)")
    _model_placement_arguments(au, device_map=True)
    au.add_argument("--bootstrap", type=int, default=d.bootstrap, help="bootstrap resamples for the intervals")
    au.add_argument("--seed", type=int, default=d.seed)
    au.add_argument("--out", default=d.out, help="output directory (default ./%(default)s)")
    au.add_argument("--no-progress", action="store_true", help="no progress bars")
    _drafting_arguments(au, d)


def _drafting_arguments(au: argparse.ArgumentParser, d: AuditConfig) -> None:
    au.add_argument("--draft", choices=DRAFT_CHOICES, default=d.draft,
                    help="sample drafts from q, or take argmax q as vLLM/SGLang do (default %(default)s)")
    au.add_argument("--verify-method", choices=VERIFY_METHOD_CHOICES, default=d.verify_method,
                    help="token-by-token or block verification; both: generate under each and compare "
                         "(default %(default)s)")
    au.add_argument("--ngram", action="store_true",
                    help="also generate with the n-gram (prompt-lookup) drafter, timed the same way")
    au.add_argument("--ngram-max", type=int, default=d.ngram_max,
                    help="longest suffix looked up (default %(default)s)")
    au.add_argument("--ngram-min", type=int, default=d.ngram_min,
                    help="shortest suffix looked up (default %(default)s)")


def _add_scdf(sub) -> None:
    d = ScdfConfig()
    sc = sub.add_parser(
        "scdf", help="s-CDF: fine-tune the drafter where it is slowest (or a baseline), verifier frozen",
        description="s-CDF: fine-tune only the drafter, sampling tasks by their excess divergence over the "
                    "best task, with the verifier frozen; or a baseline at the same budget.")
    sc.add_argument("--out", default=d.out_dir, help="output directory (default %(default)s)")
    sc.add_argument("--method", choices=METHODS, default=d.method,
                    help="scdf (default), or a baseline: uniform distillation, balanced data, temperature tuning")
    sc.add_argument("--compare", action="store_true",
                    help="run every method (or --methods) under one budget and write a comparison report "
                         "(JSON, Markdown, PNG) in --out")
    sc.add_argument("--methods", type=_comma_list, default=list(METHODS), help="methods for --compare")
    sc.add_argument("--seeds", type=_comma_list, default=["0", "1", "2"],
                    help="comma-separated seeds for --compare (default 0,1,2)")
    sc.add_argument("--search-budget", type=int, default=4,
                    help="--compare: candidate knob settings per method, each run with every seed and measured on "
                         "the validation split (default %(default)s)")
    sc.add_argument("--search", action="append", default=[], type=_search_values, metavar="KNOB=V1,V2,...",
                    help="--compare: values searched for a knob (lr, uniform_mix, balance_mix, temperature_lr) "
                         "instead of the defaults of specfair.scdf_select (repeatable)")
    sc.add_argument("--prefix", default="scdf_compare",
                    help="--compare report file names (<out>/<prefix>.json/.md/.png)")
    sc.add_argument("--work-dir", help="--compare: where each run's drafter and checkpoint go "
                                       "(default <out>/<prefix>_runs)")
    _measure_arguments(sc)
    sc.add_argument("--verifier", help="verifier: hub name, directory or GGUF file (default: the shipped pair)")
    sc.add_argument("--drafter", help="drafter: hub name, directory or GGUF file (default: the shipped pair)")
    _corpus_arguments(sc, d.corpus_source)
    sc.add_argument("--tasks", type=_comma_list, help="comma-separated tasks (default: every task of the corpus)")
    sc.add_argument("--heldout-fraction", type=float, default=d.heldout_fraction,
                    help="share of split keys held out for reporting (default %(default)s)")
    sc.add_argument("--validation-fraction", type=float, default=d.validation_fraction,
                    help="share of split keys for validation, taken from training text; --compare chooses knobs "
                         "there (default %(default)s)")
    sc.add_argument("--steps", type=int, default=d.steps)
    sc.add_argument("--batch-size", type=int, default=d.batch_size, help="windows per step per rank")
    sc.add_argument("--context-length", type=int, default=d.context_length)
    sc.add_argument("--lr", type=float, default=d.lr)
    sc.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    sc.add_argument("--loss", choices=LOSS_KINDS, default=d.loss,
                    help="training objective (specfair.objectives): kl (default), ce, tv, or the LK losses "
                         "neg_log_alpha (-log alpha) and kl_tv (adaptive KL/TV hybrid)")
    sc.add_argument("--task-loss", action="append", default=[], type=_task_loss, metavar="TASK=OBJECTIVE",
                    help="objective for one task instead of --loss (repeatable)")
    sc.add_argument("--lk-eta", type=float, default=d.lk_eta,
                    help="kl_tv: lambda = exp(-eta * mean alpha of the batch) (default %(default)s)")
    sc.add_argument("--weight-divergence", choices=WEIGHT_KINDS, default=d.weight_divergence,
                    help="divergence D_t the s-CDF weights come from (default %(default)s)")
    sc.add_argument("--temperature", type=float, default=d.temperature)
    sc.add_argument("--uniform-mix", type=float, default=d.uniform_mix,
                    help="share of balanced sampling mixed into the s-CDF probabilities")
    sc.add_argument("--balance-mix", type=float, default=d.balance_mix,
                    help="balanced: share of 1/m sampling, the rest token-proportional (default %(default)s)")
    sc.add_argument("--stats-decay", type=float, default=d.stats_decay)
    sc.add_argument("--lora-rank", type=int, default=d.lora_rank, help="0: full fine-tune (default)")
    sc.add_argument("--lora-alpha", type=float, default=d.lora_alpha)
    sc.add_argument("--seed", type=int, default=d.seed)
    sc.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    sc.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    sc.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)
    sc.add_argument("--device", default=d.device, help="cpu (default), cuda, cuda:N or auto")
    sc.add_argument("--shard", choices=SHARDS, default=d.shard,
                    help="under torchrun: ddp (every rank holds the drafter; default) or fsdp (FSDP2 fully_shard "
                         "per decoder layer: parameters, gradients and optimiser state split over the ranks)")
    _model_placement_arguments(sc, device_map=False)
    sc.add_argument("--eval-tokens-per-task", type=int, default=d.eval_tokens_per_task)
    sc.add_argument("--num-draft", type=int, default=d.num_draft, help="K of the speed-up S(alpha; K, c)")
    sc.add_argument("--cost-ratio", type=float, help="c of S(alpha; K, c) (default: parameter ratio)")
    sc.add_argument("--no-eval", action="store_true", help="skip the held-out before/after evaluation")
    sc.add_argument("--no-progress", action="store_true")


def _measure_arguments(sc: argparse.ArgumentParser) -> None:
    m = MeasureOptions()
    sc.add_argument("--no-generate", action="store_true",
                    help="--compare: skip the measured generative speed-up (the audit's timing path) of the original "
                         "and the chosen drafters")
    sc.add_argument("--generate-prompts", type=int, default=m.num_prompts,
                    help="--compare: held-out prompts per task for the timed generation (default %(default)s)")
    sc.add_argument("--generate-prompt-tokens", type=int, default=m.prompt_tokens,
                    help="--compare: tokens of each prompt (default %(default)s)")
    sc.add_argument("--generate-new-tokens", type=int, default=m.max_new_tokens,
                    help="--compare: tokens generated per prompt (default %(default)s)")
    sc.add_argument("--generate-repeats", type=int, default=m.timing_repeats,
                    help="--compare: interleaved timing repeats, medians taken (default %(default)s)")
    sc.add_argument("--generate-seeds", type=_comma_list,
                    help="--compare: time the chosen drafters of these seeds only (default: every seed)")
    sc.add_argument("--ood-corpus", default=m.ood_corpus,
                    help="--compare: second corpus the drafters are also measured on, out of domain (a "
                         "specfair.corpus source); auto (default): django if installed, else skipped; none: skip")
    sc.add_argument("--ood-corpus-option", action="append", default=[], type=_option, metavar="KEY=VALUE",
                    help="--compare: option of the out-of-domain source, e.g. root=DIR (repeatable)")


def measure_options(a) -> MeasureOptions:
    """The MeasureOptions of parsed ``specfair scdf --compare`` arguments."""
    return MeasureOptions(generate=not a.no_generate, num_prompts=a.generate_prompts,
                          prompt_tokens=a.generate_prompt_tokens, max_new_tokens=a.generate_new_tokens,
                          timing_repeats=a.generate_repeats, ood_corpus=a.ood_corpus,
                          generate_seeds=None if a.generate_seeds is None else _seeds(a.generate_seeds),
                          ood_options=dict(a.ood_corpus_option))


def _add_train_pair(sub) -> None:
    tp = sub.add_parser(
        "train-pair", help="train a drafter/verifier pair of small Llama models",
        description="Train a shared BPE tokenizer and a verifier/drafter pair of Llama models on a "
                    "multilingual corpus; save them in Hugging Face format with model cards and "
                    "report per-language held-out perplexity and expected acceptance.")
    tp.add_argument("--out", required=True, help="output directory (created if missing)")
    tp.add_argument("--preset", default="default", choices=["micro", "default"],
                    help="model sizes and training length (micro: seconds, for tests; default: the shipped pair)")
    tp.add_argument("--steps", type=int, help="optimiser steps per model (default: the preset's)")
    tp.add_argument("--drafter-steps", type=int, help="steps for the drafter (default: --steps)")
    tp.add_argument("--batch-size", type=int)
    tp.add_argument("--lr", type=float)
    tp.add_argument("--seed", type=int)
    tp.add_argument("--device", help="cpu (default), cuda, cuda:N or auto")
    tp.add_argument("--languages", type=_comma_list,
                    help="comma-separated languages (default: every language of the corpus)")
    _corpus_arguments(tp, None)
    tp.add_argument("--heldout-fraction", type=float,
                    help="share of the corpus's split keys held out for evaluation (default 0.1)")
    tp.add_argument("--save-dtype", choices=["float32", "float16", "bfloat16"])
    tp.add_argument("--reuse-verifier", metavar="DIR",
                    help="an existing pair's verifier directory: keep its tokenizer and verifier "
                         "(copied to OUT/verifier) and train only the drafter")
    tp.add_argument("--drafter-objective", choices=["ce", "distill"],
                    help="drafter loss: ce (next token, default) or distill (KL(p || q) to the verifier)")
    tp.add_argument("--drafter-init", metavar="random|verifier|DIR",
                    help="drafter start: random (default), verifier (its embedding, first layers, norm, head) "
                         "or a model directory whose first layers are copied")
    tp.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_corpus(sub) -> None:
    co = sub.add_parser("corpus", help="per-task split sizes of a task corpus",
                        description="Summarise a task corpus: items and characters per task and split.")
    co.add_argument("source", nargs="?", default="default",
                    help=f"one of: default ({DEFAULT_SOURCE}), {', '.join(list_sources())}")
    co.add_argument("--tasks", type=_comma_list, help="comma-separated tasks (default: all)")
    co.add_argument("--heldout-fraction", type=float, default=0.1)
    co.add_argument("--validation-fraction", type=float, default=0.0,
                    help="share of split keys for validation, taken from training text (default %(default)s)")
    co.add_argument("--seed", type=int, default=0)
    co.add_argument("--max-items-per-task", type=int)
    co.add_argument("--option", action="append", default=[], type=_option, metavar="KEY=VALUE",
                    help="source option, e.g. root=/path or path=data.jsonl")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="specfair",
        description="specfair: who gets the speed-up of speculative decoding. Without a subcommand, runs the demo.")
    sub = ap.add_subparsers(dest="command", metavar="{audit,scdf,train-pair,corpus,demo}")
    _add_audit(sub)
    _add_scdf(sub)
    _add_train_pair(sub)
    _add_corpus(sub)
    sub.add_parser("demo", add_help=False,
                   help="per-task demonstration of verify on the CPU (options: specfair demo --help)")
    return ap


# ---------------------------------------------------------------------------------- commands
def _audit(a) -> int:
    nd = a.num_draft
    if nd != "auto":
        try:
            nd = int(nd)
        except ValueError:
            raise AuditError(f"--num-draft must be a positive integer or auto, got {a.num_draft!r}") from None
    cfg = AuditConfig(drafter=a.drafter, verifier=a.verifier, gguf_file=a.gguf_file, corpus=a.corpus,
                      corpus_options=dict(a.corpus_option), tasks=a.tasks, num_prompts=a.num_prompts,
                      prompt_tokens=a.prompt_tokens, max_new_tokens=a.max_new_tokens, num_draft=nd,
                      temperature=a.temperature, teacher_forced_tokens=a.teacher_forced_tokens,
                      context_length=a.context_length, timing_repeats=a.repeats,
                      generation_batch_size=a.generation_batch_size or None,
                      generative=not a.no_generation, device=a.device, dtype=a.dtype, bootstrap=a.bootstrap,
                      seed=a.seed, out=a.out, progress=not a.no_progress, gguf_cache=not a.no_cache,
                      device_map=a.device_map, draft=a.draft, verify_method=a.verify_method, ngram=a.ngram,
                      ngram_max=a.ngram_max, ngram_min=a.ngram_min)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AuditWarning)
        report = run_audit(cfg)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(report.table())
    print(f"\nwritten to {a.out}/: {', '.join(report.files)}")
    return 0


def scdf_config(a) -> ScdfConfig:
    """The ScdfConfig of parsed ``specfair scdf`` arguments."""
    return ScdfConfig(
        out_dir=a.out, method=a.method, verifier=a.verifier, drafter=a.drafter,
        corpus_source=a.corpus, corpus_options=dict(a.corpus_option),
        tasks=a.tasks, heldout_fraction=a.heldout_fraction, validation_fraction=a.validation_fraction,
        balance_mix=a.balance_mix, steps=a.steps, batch_size=a.batch_size,
        context_length=a.context_length, lr=a.lr, warmup_steps=a.warmup_steps, loss=a.loss,
        task_losses=dict(a.task_loss), lk_eta=a.lk_eta,
        weight_divergence=a.weight_divergence, temperature=a.temperature, uniform_mix=a.uniform_mix,
        stats_decay=a.stats_decay, lora_rank=a.lora_rank, lora_alpha=a.lora_alpha, seed=a.seed,
        checkpoint_every=a.checkpoint_every, resume=a.resume, stop_after=a.stop_after, device=a.device,
        shard=a.shard,
        eval_tokens_per_task=a.eval_tokens_per_task, num_draft=a.num_draft, cost_ratio=a.cost_ratio,
        evaluate=not a.no_eval, progress=not a.no_progress, gguf_cache=not a.no_cache)


def _seeds(items: list[str]) -> list[int]:
    try:
        return [int(s) for s in items]
    except ValueError:
        raise ScdfError(f"seeds must be comma-separated integers, got {','.join(items)!r}") from None


def _scdf(a) -> int:
    cfg = scdf_config(a)
    if a.compare:
        seeds = _seeds(a.seeds)
        summary = run_comparison(cfg, methods=a.methods, seeds=seeds, prefix=a.prefix, work_dir=a.work_dir,
                                 budget=a.search_budget, search=dict(a.search), measure=measure_options(a))
        print(summary["markdown_table"])
        print(f"report: {summary['paths']['json']}, {summary['paths']['markdown']}, {summary['paths']['png']}")
        return 0
    res = train(cfg)
    if res.drafter is None:
        print(f"stopped after step {res.report.get('stopped_after')} (checkpoint in {cfg.out_dir})")
        return 0
    if res.report.get("heldout"):
        print(_scdf_table(res.report))
    print(f"saved {Path(cfg.out_dir) / 'drafter'}; report {Path(cfg.out_dir) / 'scdf_report.json'}")
    return 0


def _scdf_table(report: dict) -> str:
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


def _train_pair(a) -> int:
    overrides = {"out_dir": a.out}
    for name in ("steps", "drafter_steps", "batch_size", "lr", "seed", "device", "languages",
                 "save_dtype", "heldout_fraction", "reuse_verifier", "drafter_objective", "drafter_init"):
        if getattr(a, name) is not None:
            overrides[name] = getattr(a, name)
    if a.corpus is not None:
        overrides["corpus_source"] = a.corpus
    if a.corpus_option:
        overrides["corpus_options"] = dict(a.corpus_option)
    if a.no_progress:
        overrides["progress"] = False
    report = train_pair(preset(a.preset, **overrides))
    acc, ev = report["acceptance"], report["eval"]
    print(f"saved {report['verifier']['path']} ({report['verifier']['parameters']:,} parameters) and "
          f"{report['drafter']['path']} ({report['drafter']['parameters']:,} parameters)")
    print(f"{'language':<10} {'drafter w':>9} {'ppl ver':>9} {'ppl dra':>9} {'alpha':>7} {'KL':>7}")
    fmt = lambda v, nd=3: "n/a" if v is None else f"{v:.{nd}f}"
    for l in report["languages"]:
        print(f"{l:<10} {report['mixtures']['drafter'][l]:>9.4f} {fmt(ev['verifier_ppl'][l], 2):>9} "
              f"{fmt(ev['drafter_ppl'][l], 2):>9} {fmt(ev['alpha'][l]):>7} {fmt(ev['kl'][l]):>7}")
    print(f"mean alpha: well-represented {fmt(acc['alpha_mean_well_represented'])}, "
          f"under-represented {fmt(acc['alpha_mean_under_represented'])}; spread {fmt(acc['alpha_spread'])}")
    print(f"report: {report['out_dir']}/pair_report.json")
    return 0


def _corpus(a) -> int:
    c = load_corpus(a.source, a.tasks, a.heldout_fraction, a.seed, a.max_items_per_task,
                    validation_fraction=a.validation_fraction, **dict(a.option))
    print(c.summary())
    return 0


COMMANDS = {"audit": _audit, "scdf": _scdf, "train-pair": _train_pair, "corpus": _corpus}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        return demo_main(argv)   # no subcommand: the demo
    if argv[0] == "demo":
        return demo_main(argv[1:])
    a = parser().parse_args(argv)
    try:
        return COMMANDS[a.command](a)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
