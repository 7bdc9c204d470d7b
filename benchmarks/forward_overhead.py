"""Our cached forwards (`specfair.decoding.CachedModel.forward`, what the generator runs every
step) against plain Hugging Face forwards of the same width, in one run.

A model of realistic shape is built from a config with random weights (no download):
Qwen2 with 0.5B-like dimensions (hidden 896, 14 heads, 2 KV heads, intermediate 4864,
vocabulary 151936; ``--layers`` of them, 24 in the real model) as the verifier, and the same
width with ``--drafter-layers`` as the drafter.  Both caches hold the same ``--context``
tokens; each timed call appends W new tokens and is rolled back (untimed) afterwards, so
every call sees the same cached length.

Variants per width W (verifier: W = K+1 for every ``--num-draft`` K, and 1; drafter: W = 1):
  ours      CachedModel.forward(tokens, None, keep=...) as the generator calls it (verifier:
            logits of all W positions, which `verify` reads; drafter: the last one)
  hf        model(input_ids=tokens, past_key_values=cache, use_cache=True) on a
            DynamicCache: what a user writes
  hf-mask   the same with the 2-D attention mask of ones and the position ids that
            ``generate`` passes

Rounds: ``--repeats`` rounds (one warm-up round first); in every round each width's variants
run back to back (the cheap drafter ones ``--drafter-repeats`` times), the order rotating.
Reported per variant: the median seconds, the median over rounds of its time / hf's time in
the same round (paired, so a burst of load on a shared machine mostly cancels) with the
interquartile range of those ratios, and the spread (max - min) / median of its times.

Then whole steps: ``SpeculativeGenerator(num_draft=K, temperature=0, profile=True)`` over
``--new-tokens`` tokens from the same prompt (median of ``--step-repeats`` calls), its time
per step split into draft / verify_forward / kernel / bookkeeping, beside what plain HF
forwards of the same widths cost (K drafter forwards of 1 token + one verifier forward of
K+1, the medians above).

    python benchmarks/forward_overhead.py --layers 24 --repeats 9 --json out.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch


def build(layers: int, seed: int, vocab: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=896, intermediate_size=4864, num_hidden_layers=layers,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True, attn_implementation="sdpa")
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg).eval()


def variants(model, prompt: torch.Tensor, width: int, keep_last: bool):
    """{name: (timed fn, untimed rollback)} for one model and width."""
    from transformers import DynamicCache

    from specfair.decoding import CachedModel

    B, L = prompt.shape
    V = model.config.vocab_size
    tokens = torch.randint(0, V, (B, width), generator=torch.Generator().manual_seed(width))
    ours = CachedModel(model, V)
    ours.reset(B, prompt.device)
    ours.forward(prompt, None, keep=1)
    hf_cache = DynamicCache(config=model.config)
    model(input_ids=prompt, past_key_values=hf_cache, use_cache=True, logits_to_keep=1)
    mask_cache = DynamicCache(config=model.config)
    model(input_ids=prompt, past_key_values=mask_cache, use_cache=True, logits_to_keep=1)
    full_mask = torch.ones(B, L + width, dtype=torch.long)
    pos = torch.arange(L, L + width)[None].expand(B, -1)

    def ours_fn():
        return ours.forward(tokens, None, keep=1 if keep_last else None)

    def ours_back():
        ours.crop_end(width)
        ours.pos = ours.pos - width

    def hf_fn():
        return model(input_ids=tokens, past_key_values=hf_cache, use_cache=True).logits

    def hf_mask_fn():
        return model(input_ids=tokens, attention_mask=full_mask, position_ids=pos, past_key_values=mask_cache,
                     use_cache=True).logits

    return {"ours": (ours_fn, ours_back), "hf": (hf_fn, lambda: hf_cache.crop(-width)),
            "hf-mask": (hf_mask_fn, lambda: mask_cache.crop(-width))}


def whole_steps(drafter, verifier, prompt, args, med) -> list[dict]:
    """Per-step sections of the generator against the plain forwards' medians."""
    from specfair.generator import SpeculativeGenerator

    out = []
    for K in args.num_draft:
        gen = SpeculativeGenerator(drafter, verifier, num_draft=K, temperature=0.0, profile=True)
        runs = []
        for _ in range(args.step_repeats + 1):
            res = gen.generate(prompt, max_new_tokens=args.new_tokens, eos_token_id=[], seed=0)
            runs.append(res.time_per_step())
        runs = runs[1:]
        sec = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        plain_draft = K * med["drafter W=1 hf"]
        plain_verify = med[f"verifier W={K + 1} hf"]
        row = {"K": K, "steps": res.steps, "per_step_ms": {k: v * 1e3 for k, v in sec.items()},
               "plain_draft_ms": plain_draft * 1e3, "plain_verify_ms": plain_verify * 1e3,
               "draft_over_plain": sec["draft"] / plain_draft,
               "verify_over_plain": sec["verify_forward"] / plain_verify,
               "outside_forwards_ms": (sec["kernel"] + sec["bookkeeping"]) * 1e3}
        out.append(row)
        print(f"step K={K}: draft {sec['draft'] * 1e3:.1f} ms (plain {plain_draft * 1e3:.1f}), verify_forward "
              f"{sec['verify_forward'] * 1e3:.1f} ms (plain {plain_verify * 1e3:.1f}), kernel + bookkeeping "
              f"{row['outside_forwards_ms']:.2f} ms, total {sec['total'] * 1e3:.1f} ms over {res.steps} steps")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--drafter-layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--num-draft", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--drafter-repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--step-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    verifier, drafter = build(args.layers, 0, args.vocab), build(args.drafter_layers, 1, args.vocab)
    prompt = torch.randint(0, args.vocab, (1, args.context), generator=torch.Generator().manual_seed(0))
    cases = {}
    with torch.inference_mode():
        for W in [1] + [k + 1 for k in args.num_draft]:
            for name, (fn, back) in variants(verifier, prompt, W, keep_last=False).items():
                cases[f"verifier W={W} {name}"] = (fn, back)
        for name, (fn, back) in variants(drafter, prompt, 1, keep_last=True).items():
            cases[f"drafter W=1 {name}"] = (fn, back)
        # the same logits from every variant of a width (so the comparison is like for like)
        for key, (fn, back) in list(cases.items()):
            out = fn()
            back()
            ref_key = key.rsplit(" ", 1)[0] + " hf"
            if key != ref_key:
                ref = cases[ref_key][0]()
                cases[ref_key][1]()
                torch.testing.assert_close(out[:, -ref.shape[1]:], ref[:, -out.shape[1]:], rtol=1e-4, atol=1e-4)
        names = list(cases)
        groups = list(dict.fromkeys(n.rsplit(" ", 1)[0] for n in names))
        times = {n: [] for n in names}
        ratios = {n: [] for n in names}
        for r in range(args.repeats + 1):
            for g in groups[r % len(groups):] + groups[:r % len(groups)]:
                members = [n for n in names if n.startswith(g + " ")]
                for _ in range(args.drafter_repeats if g.startswith("drafter") else 1):
                    # a width's variants back to back, the order rotating: a burst of load hits
                    # all of them, and the per-round ratio to hf cancels most of it
                    order = members[r % len(members):] + members[:r % len(members)]
                    got = {}
                    for n in order:
                        fn, back = cases[n]
                        t0 = time.perf_counter()
                        fn()
                        got[n] = time.perf_counter() - t0
                        back()
                    if r:  # round 0 warms up
                        for n in members:
                            times[n].append(got[n])
                            ratios[n].append(got[n] / got[f"{g} hf"])
    med = {n: statistics.median(v) for n, v in times.items()}
    rows = []
    for n in names:
        q = statistics.quantiles(ratios[n], n=4) if len(ratios[n]) > 1 else [ratios[n][0]] * 3
        rows.append({"case": n, "median_ms": med[n] * 1e3, "over_hf_median_of_ratios": statistics.median(ratios[n]),
                     "over_hf_iqr": [q[0], q[2]], "over_hf_of_medians": med[n] / med[n.rsplit(" ", 1)[0] + " hf"],
                     "spread": (max(times[n]) - min(times[n])) / med[n], "samples": len(times[n])})
        print(f"{n:28s} {med[n] * 1e3:9.2f} ms   / hf {rows[-1]['over_hf_median_of_ratios']:6.3f} "
              f"(IQR {q[0]:.3f}-{q[2]:.3f})   spread {rows[-1]['spread']:.2f}")
    steps = whole_steps(drafter, verifier, prompt, args, med)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "steps": steps, "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "platform": platform.platform(),
                       "python": sys.version.split()[0]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
