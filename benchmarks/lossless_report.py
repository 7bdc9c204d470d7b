"""Large-sample losslessness check of `verify`, for the README's statistics table.

    python benchmarks/lossless_report.py [--rows 1000000] [--vocab 8] [--backend cpp] [--method token]
                                         [--out FILE.json]

One fixed verifier/drafter pair (V=8 by default, K=4, T=1), many independently seeded rows.
A vocabulary above 32 entries spans several groups of the two-level sampling race
(`specfair_kernels.rng.RACE_GROUP`), so both of its levels are tested.

``--method token``: for each output position j, the tokens emitted at j (rows that emitted
>= j+1 tokens) must follow p_j exactly, whatever happened before: chi-square against p_j,
with the total variation distance between the empirical and the target distribution.  The
per-position acceptance must equal alpha_j = sum min(p_j, q_j), and the accept-length
histogram the product of alphas.

``--method block``: block verification is exact for the emitted *sequence*, not position by
position given the length (whether x_j is kept depends on the later drafts), so each row's
output is completed to K+1 tokens with fresh draws from p (as the next verifier calls
would), and the completed sequence must follow the verifier's joint p_0 x ... x p_K: every
position's marginal, every adjacent pair (V^2 cells) and the first three positions jointly
(V^3 cells) by chi-square.  Its mean accepted length is set beside token mode's exact
expectation sum_n prod_{i<n} alpha_i (block is never below it).

Both: a negative control (emit the draft itself: "accept everything") must fail on the
same data.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time

import numpy as np
import torch
from scipy import stats as st

import specfair_kernels as sk
from specfair_kernels.api import VERIFY_METHODS

K, T = 4, 1.0


def _pair(V: int):
    g = torch.Generator().manual_seed(2025)
    target = torch.randn(K + 1, V, generator=g) * 1.5
    draft = target[:K] + torch.randn(K, V, generator=g)  # a drafter that fits imperfectly
    return target, draft, g


def _chi2(obs: torch.Tensor, probs: torch.Tensor):
    """(chi-square, p-value, TV, df) of counts against probabilities (any shape, flattened)."""
    obs, probs = obs.flatten(), probs.flatten()
    s, pv = st.chisquare(obs.numpy(), (probs * obs.sum()).numpy())
    tv = 0.5 * float((obs / obs.sum() - probs).abs().sum())
    return float(s), float(pv), tv, obs.numel() - 1


def _sample(args, target, draft, p, q, g):
    """Run verify over args.rows rows; yield (tokens [n, K], VerifyOutput, completed [n, K+1])."""
    V = target.shape[-1]
    done = 0
    while done < args.rows:
        n = min(args.chunk, args.rows - done)
        tokens = torch.multinomial(q.float(), n, replacement=True, generator=g).T.contiguous()  # [n, K]
        out = sk.verify(target.expand(n, K + 1, V), draft.expand(n, K, V), tokens, temperature=T,
                        seed=torch.arange(done, done + n) + 10**9, backend=args.backend, method=args.method)
        fresh = torch.multinomial(p.float(), n, replacement=True, generator=g).T  # [n, K+1]
        pos = torch.arange(K + 1)[None, :]
        completed = torch.where(pos < out.num_emitted.long()[:, None], out.tokens, fresh)
        yield tokens, out, completed
        done += n


def _counts(args, target, draft, p, q, g):
    V = target.shape[-1]
    c = {"emitted": torch.zeros(K + 1, V, dtype=torch.float64), "control": torch.zeros(V, dtype=torch.float64),
         "accepted": torch.zeros(K, dtype=torch.float64), "tested": torch.zeros(K, dtype=torch.float64),
         "hist": torch.zeros(K + 1, dtype=torch.float64), "marg": torch.zeros(K + 1, V, dtype=torch.float64),
         "pairs": torch.zeros(K, V * V, dtype=torch.float64), "triple": torch.zeros(V**3, dtype=torch.float64)}
    for tokens, out, comp in _sample(args, target, draft, p, q, g):
        em = out.num_emitted.long()
        na = out.num_accepted.long()
        for j in range(K + 1):
            c["emitted"][j] += torch.bincount(out.tokens[em > j, j], minlength=V).double()
            c["marg"][j] += torch.bincount(comp[:, j], minlength=V).double()
        for j in range(K):
            c["tested"][j] += (na >= j).sum()
            c["accepted"][j] += (na > j).sum()
            c["pairs"][j] += torch.bincount(comp[:, j] * V + comp[:, j + 1], minlength=V * V).double()
        c["triple"] += torch.bincount((comp[:, 0] * V + comp[:, 1]) * V + comp[:, 2], minlength=V**3).double()
        c["control"] += torch.bincount(tokens[:, 0], minlength=V).double()
        c["hist"] += torch.bincount(na, minlength=K + 1).double()
    return c


def _token_figures(c, p, alpha):
    rows = []
    for j in range(K + 1):
        s, pv, tv, _ = _chi2(c["emitted"][j], p[j])
        rows.append({"position": j, "samples": int(c["emitted"][j].sum()), "chi2": s, "p_value": pv, "tv": tv})
    acc = []
    for j in range(K):
        rate = float(c["accepted"][j] / c["tested"][j])
        se = math.sqrt(float(alpha[j]) * (1 - float(alpha[j])) / float(c["tested"][j]))
        acc.append({"position": j, "tested": int(c["tested"][j]), "realised": rate, "alpha": float(alpha[j]),
                    "z": (rate - float(alpha[j])) / se})
    hp = [float(torch.prod(alpha[:n]) * (1 - alpha[n])) for n in range(K)] + [float(torch.prod(alpha))]
    hs, hpv = st.chisquare(c["hist"].numpy(), np.array(hp) * float(c["hist"].sum()))
    return {"emitted": rows, "acceptance": acc,
            "accept_length_histogram": {"chi2": float(hs), "p_value": float(hpv), "observed": c["hist"].tolist(),
                                        "expected_probs": hp}}


def _block_figures(c, p, alpha):
    tests = []
    for j in range(K + 1):
        s, pv, tv, df = _chi2(c["marg"][j], p[j])
        tests.append({"cells": f"x{j}", "df": df, "chi2": s, "p_value": pv, "tv": tv})
    for j in range(K):
        s, pv, tv, df = _chi2(c["pairs"][j], torch.outer(p[j], p[j + 1]))
        tests.append({"cells": f"(x{j}, x{j + 1})", "df": df, "chi2": s, "p_value": pv, "tv": tv})
    s, pv, tv, df = _chi2(c["triple"], torch.einsum("a,b,c->abc", p[0], p[1], p[2]))
    tests.append({"cells": "(x0, x1, x2)", "df": df, "chi2": s, "p_value": pv, "tv": tv})
    rows = c["hist"].sum()
    mean = float((c["hist"] * torch.arange(K + 1)).sum() / rows)
    var = float((c["hist"] * torch.arange(K + 1) ** 2).sum() / rows) - mean**2
    token_exact = float(sum(torch.prod(alpha[:n]) for n in range(1, K + 1)))
    return {"completed_sequence": tests,
            "accepted_length": {"block_mean": mean, "block_se": math.sqrt(var / float(rows)),
                                "token_exact": token_exact, "histogram": c["hist"].tolist()}}


def _print(result, V):
    print(f"{result['rows']} rows, V={V}, K={K}, T={T}, backend={result['backend']}, method={result['method']}, "
          f"{result['seconds']:.1f} s")
    ctl = result["negative_control_accept_all"]
    if result["method"] == "block":
        print("| completed cells | df | chi-square | p-value | TV(empirical, joint of p) |\n|---|---|---|---|---|")
        for t in result["completed_sequence"]:
            print(f"| {t['cells']} | {t['df']} | {t['chi2']:.1f} | {t['p_value']:.3f} | {t['tv']:.5f} |")
        print(f"| control: emit the draft at 0 | {V - 1} | {ctl['chi2']:.0f} | {ctl['p_value']:.1e} "
              f"| {ctl['tv']:.4f} |")
        al = result["accepted_length"]
        print(f"\nmean accepted length: block {al['block_mean']:.4f} +- {al['block_se']:.4f}, "
              f"token mode exact {al['token_exact']:.4f}")
        return
    print(f"| position | samples | chi-square (df={V - 1}) | p-value | TV(empirical, p) |\n|---|---|---|---|---|")
    for r in result["emitted"]:
        print(f"| {r['position']} | {r['samples']:,} | {r['chi2']:.2f} | {r['p_value']:.3f} | {r['tv']:.5f} |")
    print(f"| control: accept all | {result['rows']:,} | {ctl['chi2']:.0f} | {ctl['p_value']:.1e} | {ctl['tv']:.4f} |")
    print("\n| position | tested | realised acceptance | alpha = sum min(p,q) | z |\n|---|---|---|---|---|")
    for a in result["acceptance"]:
        print(f"| {a['position']} | {a['tested']:,} | {a['realised']:.5f} | {a['alpha']:.5f} | {a['z']:+.2f} |")
    h = result["accept_length_histogram"]
    print(f"\naccept-length histogram vs prod(alpha): chi-square {h['chi2']:.2f} (df={K}), p = {h['p_value']:.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=100_000)
    ap.add_argument("--vocab", type=int, default=8, help="vocabulary size V (default 8)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--method", default="token", choices=VERIFY_METHODS, help="verify method (default token)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    V = args.vocab
    if args.method == "block" and V**3 > 10**6:
        ap.error(f"--vocab {V}: the block report's three-position joint needs V^3 <= 1e6 cells")
    target, draft, g = _pair(V)
    p = torch.softmax(target.double() / T, -1)
    q = torch.softmax(draft.double() / T, -1)
    alpha = torch.minimum(p[:K], q).sum(-1)
    t0 = time.perf_counter()
    c = _counts(args, target, draft, p, q, g)
    cs, cpv, ctv, _ = _chi2(c["control"], p[0])
    result = {
        "backend": sk.backends.select("verify", args.backend, torch.device("cpu")), "method": args.method,
        "rows": args.rows, "V": V, "K": K, "temperature": T, "seconds": time.perf_counter() - t0,
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "negative_control_accept_all": {"chi2": cs, "p_value": cpv, "tv": ctv},
    }
    result.update(_block_figures(c, p, alpha) if args.method == "block" else _token_figures(c, p, alpha))
    _print(result, V)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
