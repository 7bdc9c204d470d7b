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

Rounds: ``--repeats`` rounds, every variant once per round, the order rotating; one warm-up
round first.  Reported: the median seconds per variant and ours / hf per width; the spread
(max - min) / median says how noisy the machine was.

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

    return {"ours": (ours_fn, ours_back), "hf": (hf_fn, lambda: hf_cache.crop(L)),
            "hf-mask": (hf_mask_fn, lambda: mask_cache.crop(L))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--drafter-layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--num-draft", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--repeats", type=int, default=9)
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
        times = {n: [] for n in names}
        for r in range(args.repeats + 1):
            shift = r % len(names)
            for n in names[shift:] + names[:shift]:
                fn, back = cases[n]
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                back()
                if r:
                    times[n].append(dt)
    med = {n: statistics.median(v) for n, v in times.items()}
    rows = []
    for n in names:
        group, variant = n.rsplit(" ", 1)
        base = med[f"{group} hf"]
        rows.append({"case": n, "median_ms": med[n] * 1e3, "over_hf": med[n] / base,
                     "spread": (max(times[n]) - min(times[n])) / med[n]})
        print(f"{n:28s} {med[n] * 1e3:9.2f} ms   / hf {med[n] / base:6.3f}   spread {rows[-1]['spread']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "platform": platform.platform(),
                       "python": sys.version.split()[0]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
