#!/usr/bin/env python3
"""Generation at batch 1 on a pair of realistic shape: ours against Hugging Face, in rounds.

The Qwen2 pair of `calibration_time.py` (0.5B -> 1.5B shapes, random weights, fp32; no
download; ``--scale`` divides the layer counts) decodes one prompt of ``--prompt-tokens``
random ids greedily for ``--new-tokens`` tokens, EOS disabled, so every provider must emit
the same tokens (checked).  Providers, in one process, after one warm-up call of every
provider on a 2-token run, are timed once per round for ``--rounds`` rounds whose order
rotates by one provider each round, so a slow spell of the machine hits one round of every
provider; each row has the median seconds, and each ratio is the median over rounds of the
ratio within a round (the calibration of auto is outside the timing, reported beside it):

  hf-verifier      verifier.generate(): the verifier alone
  hf-assisted K    verifier.generate(assistant_model=drafter), K drafts every step (constant
                   schedule, no confidence cut-off): the same drafting as ours
  specfair K       SpeculativeGenerator(num_draft=K, temperature=0, profile=False)
  specfair-auto    SpeculativeGenerator(num_draft="auto"): K per step from the measured costs
                   (K = 0, the verifier alone, where no K pays)

On a CPU the verifier's forward over K+1 tokens costs several times one over 1 token
(``verify_cost`` in the JSON), so no K pays and every fixed-K provider is slower than the
verifier alone; the JSON records the measured costs and break-even acceptances beside the
times, and the acceptance the random-weight drafter reached.

    python benchmarks/realistic_generate.py --threads 2 --json benchmarks/results/realistic_generate_cpu.json
"""
from __future__ import annotations

import json
import platform
import statistics
import sys
import time

import torch
from calibration_time import build_pair, pair_arguments


def main(argv=None) -> int:
    ap = pair_arguments(__doc__.split("\n")[0])
    ap.add_argument("--num-draft", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds, the order rotating (default 3)")
    args = ap.parse_args(argv)
    from specfair.costs import break_even_acceptance
    from specfair.generator import SpeculativeGenerator

    t0 = time.perf_counter()
    verifier, vshape, drafter, dshape = build_pair(args)
    print(f"built in {time.perf_counter() - t0:.0f} s", flush=True)
    prompt = torch.randint(10, args.vocab, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    ours = {K: SpeculativeGenerator(drafter, verifier, num_draft=K, temperature=0.0, profile=False)
            for K in args.num_draft}
    auto = SpeculativeGenerator(drafter, verifier, num_draft="auto", temperature=0.0, profile=False)
    t0 = time.perf_counter()
    costs = auto.measured_costs(1)
    calibration_s = time.perf_counter() - t0
    print(f"auto calibrated in {calibration_s:.1f} s: c = {costs['cost_ratio']:.3f}, "
          f"r_K = {[round(r, 2) for r in costs['verify_cost']]}", flush=True)

    def hf(K):
        def run(n):
            kw = {}
            if K is not None:
                gc = drafter.generation_config
                gc.num_assistant_tokens, gc.num_assistant_tokens_schedule = K, "constant"
                gc.assistant_confidence_threshold = 0.0
                kw["assistant_model"] = drafter
            out = verifier.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                    do_sample=False, eos_token_id=None, pad_token_id=0, **kw)
            return out[0, prompt.shape[1]:].tolist(), None
        return run

    def spec(gen):
        def run(n):
            out = gen.generate(prompt, max_new_tokens=n, eos_token_id=[], seed=0)
            return out.new_tokens()[0], out
        return run

    providers = {"hf-verifier": hf(None), **{f"hf-assisted K={K}": hf(K) for K in args.num_draft},
                 **{f"specfair K={K}": spec(g) for K, g in ours.items()}, "specfair-auto": spec(auto)}
    for run in providers.values():   # warm-up: first-call costs out of the timing
        run(2)
    names, reference = list(providers), None
    times, last = {name: [] for name in names}, {}
    for rnd in range(args.rounds):
        for name in names[rnd % len(names):] + names[:rnd % len(names)]:
            t0 = time.perf_counter()
            tokens, out = providers[name](args.new_tokens)
            times[name].append(time.perf_counter() - t0)
            reference = reference or tokens
            if tokens != reference:
                raise SystemExit(f"{name} emitted {tokens}, the verifier alone {reference}")
            last[name] = (tokens, out)
            print(f"round {rnd}: {name:18s} {times[name][-1]:7.1f} s", flush=True)
    rows = []
    for name in names:
        tokens, out = last[name]
        seconds = statistics.median(times[name])
        row = {"provider": name, "seconds": seconds, "seconds_per_round": times[name],
               "tokens_per_s": len(tokens) / seconds}
        if out is not None:
            row.update(steps=out.steps, num_draft=out.num_draft,
                       realised_acceptance=float(out.stats.acceptance_rate()[0]))
        rows.append(row)

    def paired(num, den):   # median over rounds of the tokens/s ratio within a round
        return statistics.median(d / n for n, d in zip(times[num], times[den]))

    for r in rows:
        r["over_hf_verifier"] = paired(r["provider"], "hf-verifier")
        k = r["provider"].split("K=")[-1] if "K=" in r["provider"] else None
        if k and r["provider"].startswith("specfair"):
            r["over_hf_assisted_same_k"] = paired(r["provider"], f"hf-assisted K={k}")
        print(f"{r['provider']:18s} median {r['seconds']:7.1f} s  {r['tokens_per_s']:.3f} tok/s  "
              f"{r['over_hf_verifier']:.2f}x HF verifier alone", flush=True)
    r_k = costs["verify_cost"]
    out = {"script": "benchmarks/realistic_generate.py", "args": vars(args), "verifier_shape": vshape,
           "drafter_shape": dshape, "dtype": "float32", "device": "cpu", "threads": torch.get_num_threads(),
           "torch": torch.__version__, "platform": platform.platform(), "python": sys.version.split()[0],
           "calibration_s": calibration_s, "costs": costs,
           "break_even_acceptance": {K: break_even_acceptance(K, costs["cost_ratio"], r_k[K])
                                     for K in range(1, len(r_k))},
           "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
