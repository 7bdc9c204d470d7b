"""Large-sample losslessness check of `verify`, for the README's statistics table.

    python benchmarks/lossless_report.py [--rows 1000000] [--vocab 8] [--backend cpp] [--out FILE.json]

One fixed verifier/drafter pair (V=8 by default, K=4, T=1), many independently seeded rows.
A vocabulary above 32 entries spans several groups of the two-level sampling race
(`specfair_kernels.rng.RACE_GROUP`), so both of its levels are tested. For
each output position j, the tokens emitted at j (rows that emitted >= j+1 tokens) must
follow p_j exactly, whatever happened before: chi-square against p_j, with the total
variation distance between the empirical and the target distribution.  The
per-position acceptance must equal alpha_j = sum min(p_j, q_j), and the accept-length
histogram the product of alphas.  A negative control (emit the draft itself: "accept
everything") must fail on the same data.
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=100_000)
    ap.add_argument("--vocab", type=int, default=8, help="vocabulary size V (default 8)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    V, K, T = args.vocab, 4, 1.0
    g = torch.Generator().manual_seed(2025)
    target = torch.randn(K + 1, V, generator=g) * 1.5
    draft = target[:K] + torch.randn(K, V, generator=g)  # a drafter that fits imperfectly
    p = torch.softmax(target.double() / T, -1)
    q = torch.softmax(draft.double() / T, -1)
    alpha = torch.minimum(p[:K], q).sum(-1)

    counts = torch.zeros(K + 1, V, dtype=torch.float64)
    control = torch.zeros(V, dtype=torch.float64)
    accepted = torch.zeros(K, dtype=torch.float64)
    tested = torch.zeros(K, dtype=torch.float64)
    hist = torch.zeros(K + 1, dtype=torch.float64)
    t0 = time.perf_counter()
    done = 0
    while done < args.rows:
        n = min(args.chunk, args.rows - done)
        tokens = torch.multinomial(q.float(), n, replacement=True, generator=g).T.contiguous()  # [n, K]
        out = sk.verify(target.expand(n, K + 1, V), draft.expand(n, K, V), tokens, temperature=T,
                        seed=torch.arange(done, done + n) + 10**9, backend=args.backend)
        em = out.num_emitted.long()
        for j in range(K + 1):
            sel = em > j
            counts[j] += torch.bincount(out.tokens[sel, j], minlength=V).double()
        control += torch.bincount(tokens[:, 0], minlength=V).double()
        na = out.num_accepted.long()
        hist += torch.bincount(na, minlength=K + 1).double()
        for j in range(K):
            tested[j] += (na >= j).sum()
            accepted[j] += (na > j).sum()
        done += n
    seconds = time.perf_counter() - t0

    def chi2(obs, probs):
        exp = probs * obs.sum()
        s, pv = st.chisquare(obs.numpy(), exp.numpy())
        tv = 0.5 * float((obs / obs.sum() - probs).abs().sum())
        return float(s), float(pv), tv

    rows = []
    for j in range(K + 1):
        s, pv, tv = chi2(counts[j], p[j])
        rows.append({"position": j, "samples": int(counts[j].sum()), "chi2": s, "p_value": pv, "tv": tv})
    cs, cpv, ctv = chi2(control, p[0])
    acc = []
    for j in range(K):
        rate = float(accepted[j] / tested[j])
        se = math.sqrt(float(alpha[j]) * (1 - float(alpha[j])) / float(tested[j]))
        acc.append({"position": j, "tested": int(tested[j]), "realised": rate, "alpha": float(alpha[j]),
                    "z": (rate - float(alpha[j])) / se})
    hp = [float(torch.prod(alpha[:n]) * (1 - alpha[n])) for n in range(K)] + [float(torch.prod(alpha))]
    hs, hpv = st.chisquare(hist.numpy(), np.array(hp) * float(hist.sum()))
    result = {
        "backend": sk.backends.select("verify", args.backend, torch.device("cpu")), "rows": args.rows, "V": V, "K": K,
        "temperature": T, "seconds": seconds, "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "emitted": rows,
        "negative_control_accept_all": {"chi2": cs, "p_value": cpv, "tv": ctv},
        "acceptance": acc, "accept_length_histogram": {"chi2": float(hs), "p_value": float(hpv),
                                                       "observed": hist.tolist(), "expected_probs": hp},
    }
    print(f"{args.rows} rows, V={V}, K={K}, T={T}, backend={result['backend']}, {seconds:.1f} s")
    print(f"| position | samples | chi-square (df={V - 1}) | p-value | TV(empirical, p) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['position']} | {r['samples']:,} | {r['chi2']:.2f} | {r['p_value']:.3f} | {r['tv']:.5f} |")
    print(f"| control: accept all | {int(control.sum()):,} | {cs:.0f} | {cpv:.1e} | {ctv:.4f} |")
    print("\n| position | tested | realised acceptance | alpha = sum min(p,q) | z |")
    print("|---|---|---|---|---|")
    for a in acc:
        print(f"| {a['position']} | {a['tested']:,} | {a['realised']:.5f} | {a['alpha']:.5f} | {a['z']:+.2f} |")
    print(f"\naccept-length histogram vs prod(alpha): chi-square {hs:.2f} (df={K}), p = {hpv:.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
