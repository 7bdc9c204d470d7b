"""A short demonstration of `verify` on the CPU: who gets the speed-up?

Four synthetic "tasks" share one verifier distribution family; the drafter fits each
task less well (more logit noise), as a drafter trained on skewed data would.  Every
verification call also measures drafter-verifier divergence per task, so the table
shows the mechanism of the paper: more divergence, fewer accepted tokens, less speed-up.
Run: ``python -m specfair_kernels.demo`` (``--help`` for options).
"""
from __future__ import annotations

import argparse
import time

import torch

from . import TaskStats, available_backends, verify
from .backends import select


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m specfair_kernels.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=25, help="verification calls per task (default 25)")
    ap.add_argument("--batch", type=int, default=16, help="rows per call (default 16)")
    ap.add_argument("--num-draft", type=int, default=4, help="draft length K (default 4)")
    ap.add_argument("--vocab", type=int, default=32000, help="vocabulary size V (default 32000)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--cost-ratio", type=float, default=0.1, help="drafter/verifier step-time ratio c")
    ap.add_argument("--backend", default="auto", choices=["auto", "triton", "cpp", "torch"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name in ("steps", "batch", "vocab"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    if args.num_draft < 0 or args.temperature < 0:
        ap.error("--num-draft and --temperature must be >= 0")

    tasks = {"well-represented": 0.5, "common": 1.0, "rare": 1.6, "unseen": 2.4}  # drafter noise scale
    T, B, K, V = len(tasks), args.batch, args.num_draft, args.vocab
    backend = select("verify", args.backend, torch.device("cpu"))
    print(f"specfair_kernels demo: backend={backend} (usable: "
          f"{', '.join(k for k, v in available_backends().items() if v is None)}), B={B}, K={K}, V={V}, "
          f"T={args.temperature}")
    gen = torch.Generator().manual_seed(args.seed)
    stats = TaskStats(num_tasks=T, max_draft=K)
    elapsed = 0.0
    for step in range(args.steps):
        for task, noise in enumerate(tasks.values()):
            target = torch.randn(B, K + 1, V, generator=gen) * 3.0
            draft = target[:, :K] + noise * torch.randn(B, K, V, generator=gen)
            tau = max(args.temperature, 1e-6)
            probs = torch.softmax(draft.reshape(-1, V) / tau, -1)
            tokens = torch.multinomial(probs, 1, generator=gen).reshape(B, K) if args.temperature > 0 \
                else draft.argmax(-1)
            seeds = torch.arange(B) + 1000 * task + args.seed * 7919
            t0 = time.perf_counter()
            verify(target, draft, tokens, temperature=args.temperature, task_ids=torch.full((B,), task),
                   stats=stats, seed=seeds, step=step, backend=backend)
            elapsed += time.perf_counter() - t0
    acc, exp_acc = stats.acceptance_rate(), stats.expected_acceptance()
    kl, ce, tps = stats.mean_kl(), stats.mean_ce(), stats.tokens_per_step()
    spd = stats.expected_speedup(args.cost_ratio)
    print(f"\n{'task':<18}{'accepted':>9}{'E[alpha]':>9}{'KL':>8}{'CE':>8}{'tok/step':>9}{'S(a;K,c)':>9}")
    for i, name in enumerate(tasks):
        print(f"{name:<18}{acc[i]:9.3f}{exp_acc[i]:9.3f}{kl[i]:8.3f}{ce[i]:8.3f}{tps[i]:9.2f}{spd[i]:9.2f}x")
    u = stats.unfairness(args.cost_ratio)
    fast, slow = int(torch.argmax(spd)), int(torch.argmin(spd))
    names = list(tasks)
    print(f"\nfastest: {names[fast]}, slowest: {names[slow]}; speed-up max/min ratio "
          f"{u['speedup_max_min_ratio']:.2f}, acceptance variance {u['acceptance_variance']:.4f}, "
          f"U (variance of per-task CE) {u['U_ce']:.4f}, U_KL {u['U_kl']:.4f}")
    calls = args.steps * T
    print(f"{calls} verify calls in {elapsed * 1e3:.0f} ms ({elapsed / calls * 1e3:.2f} ms per call, {backend})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
