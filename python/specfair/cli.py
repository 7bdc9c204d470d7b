"""`specfair` command line.

    specfair audit [--drafter X --verifier Y] [...]   the fairness audit (issue 6): who gets
                                                      how much speed-up, on the shipped pair
                                                      and corpus unless told otherwise
    specfair scdf [--method scdf|uniform|balanced|temperature] [...]
                                            s-CDF (issue 7): fine-tune the drafter where it is slowest
    specfair train-pair --out DIR [...]     train the default drafter/verifier pair (issue 5)
    specfair demo [demo options]            per-task demonstration of verify (specfair_kernels.demo)
    specfair [demo options]                 no subcommand: the demo

Errors a user can fix (unknown language, unwritable output directory, missing corpus, a
GPU asked for where there is none) print one ``error:`` line and exit with status 2;
nothing half-written is left in the output directory.
"""
from __future__ import annotations

import argparse
import re
import sys

SUBCOMMANDS = ("demo", "train-pair", "audit", "scdf")


def _parse_option(text: str):
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    low = v.lower()
    value = (True if low == "true" else False if low == "false"
             else int(v) if re.fullmatch(r"-?\d+", v) else v)
    return k, value


def _languages(text: str) -> list[str]:
    langs = [l.strip() for l in text.split(",") if l.strip()]
    if not langs:
        raise argparse.ArgumentTypeError("expected a comma-separated list of languages, e.g. en,fr,ru")
    return langs


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="specfair",
        description="specfair: who gets the speed-up of speculative decoding. "
                    "Without a subcommand, runs the demo.")
    sub = ap.add_subparsers(dest="command", metavar="{audit,scdf,train-pair,demo}")
    au = sub.add_parser(
        "audit", help="fairness audit of speculative decoding: per-task acceptance, speed-up, divergence",
        description="Who gets how much speed-up from speculative decoding, why, and how unfair it is. "
                    "Without arguments: the shipped default pair on the default corpus (19 languages), "
                    "on the CPU, in a few minutes.")
    au.add_argument("--drafter", help="drafter: hub name, local directory or GGUF file (default: the shipped pair)")
    au.add_argument("--verifier", help="verifier: hub name, local directory or GGUF file (default: the shipped pair)")
    au.add_argument("--gguf-file", help="GGUF file name inside --drafter/--verifier (transformers' gguf_file=)")
    au.add_argument("--corpus", default="default",
                    help="specfair.corpus source: default (Debian installation guide), django, mgsm, jsonl, csv")
    au.add_argument("--corpus-option", action="append", default=[], type=_parse_option, metavar="KEY=VALUE",
                    help="corpus source option, e.g. path=data.jsonl or root=DIR (repeatable)")
    au.add_argument("--tasks", type=_languages, help="comma-separated tasks (languages); default: all")
    au.add_argument("--num-prompts", type=int, default=8, help="prompts per task for generation (default 8)")
    au.add_argument("--prompt-tokens", type=int, default=24, help="tokens per prompt (default 24)")
    au.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per prompt (default 32)")
    au.add_argument("--num-draft", default="4", help="draft length K, or auto (default 4)")
    au.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, 0 = greedy (default 1)")
    au.add_argument("--teacher-forced-tokens", type=int, default=4096,
                    help="held-out tokens per task for the teacher-forced pass (default 4096)")
    au.add_argument("--context-length", type=int, default=256,
                    help="window length of the teacher-forced pass (default 256)")
    au.add_argument("--no-generation", action="store_true",
                    help="teacher-forced figures only (no generation, no measured speed-up)")
    au.add_argument("--generation-batch-size", type=int, default=1,
                    help="prompts per generate call (default 1: every request timed alone, the latency a "
                         "user feels; 0: all of a task's prompts in one batch)")
    au.add_argument("--repeats", type=int, default=2,
                    help="interleaved timing repeats per task; times are their medians (default 2)")
    au.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    au.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="model dtype (default: as saved)")
    au.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    au.add_argument("--seed", type=int, default=0)
    au.add_argument("--out", default="specfair-audit", help="output directory (default ./specfair-audit)")
    au.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub.add_parser("demo", add_help=False,
                   help="per-task demonstration of verify on the CPU (options: specfair demo --help)")
    from .scdf import add_arguments as scdf_arguments

    sc = sub.add_parser(
        "scdf", help="s-CDF: fine-tune the drafter where it is slowest (or a baseline), verifier frozen",
        description="s-CDF: fine-tune only the drafter, sampling tasks by their excess divergence over the "
                    "best task, with the verifier frozen; or a baseline at the same budget.")
    scdf_arguments(sc)
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
    tp.add_argument("--languages", type=_languages,
                    help="comma-separated languages (default: every language of the corpus)")
    tp.add_argument("--corpus", default=None,
                    help="specfair.corpus source (default: the default corpus, Debian's installation guide)")
    tp.add_argument("--corpus-option", action="append", default=[], type=_parse_option,
                    metavar="KEY=VALUE", help="corpus source option, e.g. path=data.jsonl or root=DIR")
    tp.add_argument("--heldout-fraction", type=float,
                    help="share of the corpus's split keys held out for evaluation (default 0.1)")
    tp.add_argument("--save-dtype", choices=["float32", "float16", "bfloat16"])
    tp.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap


def _train_pair(a) -> int:
    from .corpus import CorpusError, SourceNotAvailableError
    from .train_pair import TrainPairError, preset, train_pair

    try:
        overrides = {"out_dir": a.out}
        for name in ("steps", "drafter_steps", "batch_size", "lr", "seed", "device", "languages",
                     "save_dtype", "heldout_fraction"):
            if getattr(a, name) is not None:
                overrides[name] = getattr(a, name)
        if a.corpus is not None:
            overrides["corpus_source"] = a.corpus
        if a.corpus_option:
            overrides["corpus_options"] = dict(a.corpus_option)
        if a.no_progress:
            overrides["progress"] = False
        cfg = preset(a.preset, **overrides)
        report = train_pair(cfg)
    except (TrainPairError, CorpusError, SourceNotAvailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    acc, ev = report["acceptance"], report["eval"]
    print(f"saved {report['verifier']['path']} ({report['verifier']['parameters']:,} parameters) and "
          f"{report['drafter']['path']} ({report['drafter']['parameters']:,} parameters)")
    print(f"{'language':<10} {'drafter w':>9} {'ppl ver':>9} {'ppl dra':>9} {'alpha':>7} {'KL':>7}")
    for l in report["languages"]:
        f = lambda v, nd: "n/a" if v is None else f"{v:.{nd}f}"  # noqa: E731
        print(f"{l:<10} {report['mixtures']['drafter'][l]:>9.4f} {f(ev['verifier_ppl'][l], 2):>9} "
              f"{f(ev['drafter_ppl'][l], 2):>9} {f(ev['alpha'][l], 3):>7} {f(ev['kl'][l], 3):>7}")
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"mean alpha: well-represented {fmt(acc['alpha_mean_well_represented'])}, "
          f"under-represented {fmt(acc['alpha_mean_under_represented'])}; spread {fmt(acc['alpha_spread'])}")
    print(f"report: {report['out_dir']}/pair_report.json")
    return 0


def _audit(a) -> int:
    from .audit import AuditConfig, AuditError, run
    from .corpus import CorpusError, SourceNotAvailableError

    nd = a.num_draft
    if nd != "auto":
        try:
            nd = int(nd)
        except ValueError:
            print(f"error: --num-draft must be a positive integer or auto, got {a.num_draft!r}", file=sys.stderr)
            return 2
    cfg = AuditConfig(drafter=a.drafter, verifier=a.verifier, gguf_file=a.gguf_file, corpus=a.corpus,
                      corpus_options=dict(a.corpus_option), tasks=a.tasks, num_prompts=a.num_prompts,
                      prompt_tokens=a.prompt_tokens, max_new_tokens=a.max_new_tokens, num_draft=nd,
                      temperature=a.temperature, teacher_forced_tokens=a.teacher_forced_tokens,
                      context_length=a.context_length, timing_repeats=a.repeats,
                      generation_batch_size=a.generation_batch_size or None,
                      generative=not a.no_generation, device=a.device, dtype=a.dtype, bootstrap=a.bootstrap,
                      seed=a.seed, out=a.out, progress=not a.no_progress)
    try:
        report = run(cfg)
    except (AuditError, CorpusError, SourceNotAvailableError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.table())
    print(f"\nwritten to {a.out}/: {', '.join(report.files)}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        from specfair_kernels.demo import main as demo   # no subcommand: the demo

        return demo(argv)
    if argv[0] == "demo":
        from specfair_kernels.demo import main as demo

        return demo(argv[1:])
    a = _parser().parse_args(argv)
    if a.command == "train-pair":
        return _train_pair(a)
    if a.command == "audit":
        return _audit(a)
    if a.command == "scdf":
        from .scdf import main_from_args

        return main_from_args(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
