#!/usr/bin/env python3
"""How long ``num_draft="auto"`` calibrates before the first token on a model of realistic size.

A Qwen2 pair of the 0.5B -> 1.5B shapes is built from configs with random weights (no
download): verifier hidden 1536, 28 layers, 12 heads, 2 KV heads, intermediate 8960;
drafter hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864; vocabulary 151936,
fp32 (about 6.2 + 2.0 GB).  ``--scale`` divides the layer counts (a smaller but
same-width pair where memory or time is short; the JSON says which).  Timed: the
calibration `SpeculativeGenerator(num_draft="auto").cost_ratio(1)` runs
(`specfair.costs.measure_costs` at K_max = 8), with the default schedule and, with
``--compare``, the full round-robin schedule it replaced for slow models
(``slow_round_s=inf``), beside one verifier forward over 1 token.

    python benchmarks/calibration_time.py --threads 2 --compare --json benchmarks/results/calibration_cpu.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import torch

SHAPES = {"verifier": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                           intermediate_size=8960),
          "drafter": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                          intermediate_size=4864)}


def build(name: str, scale: int, vocab: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = dict(SHAPES[name])
    shape["num_hidden_layers"] = max(1, shape["num_hidden_layers"] // scale)
    cfg = Qwen2Config(vocab_size=vocab, max_position_embeddings=4096, tie_word_embeddings=True,
                      attn_implementation="sdpa", **shape)
    torch.manual_seed(0 if name == "verifier" else 1)
    return Qwen2ForCausalLM(cfg).eval(), shape


def pair_arguments(description: str) -> argparse.ArgumentParser:
    """A parser with the options that build the pair (--scale, --vocab) and --threads, --json."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--scale", type=int, default=1, help="divide the layer counts by this (1: the real depth)")
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    return ap


def build_pair(args):
    """(verifier, its shape, drafter, its shape) as ``args`` (of `pair_arguments`) say, on
    ``args.threads`` threads."""
    if args.threads:
        torch.set_num_threads(args.threads)
    verifier, vshape = build("verifier", args.scale, args.vocab)
    drafter, dshape = build("drafter", args.scale, args.vocab)
    return verifier, vshape, drafter, dshape


def calibrate(drafter, verifier, **kw) -> tuple[float, dict]:
    from specfair import costs

    t0 = time.perf_counter()
    res = costs.measure_costs(drafter, verifier, 1, 8, **kw)
    return time.perf_counter() - t0, res


def main(argv=None) -> int:
    ap = pair_arguments(__doc__.split("\n")[0])
    ap.add_argument("--compare", action="store_true", help="also time the full round-robin schedule")
    args = ap.parse_args(argv)
    from specfair.generator import SpeculativeGenerator

    t0 = time.perf_counter()
    verifier, vshape, drafter, dshape = build_pair(args)
    build_s = time.perf_counter() - t0
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in (("verifier", verifier), ("drafter", drafter))}
    print(f"built in {build_s:.0f} s: verifier {params['verifier'] / 1e9:.2f}B, drafter {params['drafter'] / 1e9:.2f}B "
          "parameters", flush=True)
    gen = SpeculativeGenerator(drafter, verifier, num_draft="auto", temperature=0.0)
    t0 = time.perf_counter()
    gen.cost_ratio(1)
    first_s = time.perf_counter() - t0
    got = gen.measured_costs(1)
    print(f"default schedule: {first_s:.1f} s before the first token; widths {got['measured_widths']}, "
          f"verifier step {got['verifier_step_s'] * 1e3:.0f} ms, c = {got['cost_ratio']:.3f}", flush=True)
    out = {"script": "benchmarks/calibration_time.py", "args": vars(args), "verifier_shape": vshape,
           "drafter_shape": dshape, "params": params, "dtype": "float32", "build_s": build_s,
           "default": {"calibration_s": first_s, **got}, "threads": torch.get_num_threads(),
           "torch": torch.__version__, "platform": platform.platform(), "processor": platform.processor(),
           "python": sys.version.split()[0]}
    if args.compare:
        seconds, full = calibrate(drafter, verifier, slow_round_s=math.inf)
        print(f"full round-robin schedule: {seconds:.1f} s; widths {full['measured_widths']}, "
              f"{full['repeats']} rounds", flush=True)
        out["full_schedule"] = {"calibration_s": seconds, **full}
        out["r_K_default_over_full"] = [a / b for a, b in zip(got["verify_cost"], full["verify_cost"])]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
