"""Where the time of the Triton `verify` goes, and which launch configuration is fastest.

Run on a CUDA machine (writes JSON to $OUT or ./tune_verify.json):

    python benchmarks/tune_verify.py [--quick]

1. Per-kernel GPU time (torch.profiler) of one call at the default configuration, for
   the issue's shapes, tokens and divergence modes.
2. A sweep of (BLOCK, NT, num_warps) with each call replayed from a CUDA graph
   (``triton.testing.do_bench_cudagraph``), against the byte floor (both logits read once,
   at the measured copy bandwidth).

Calls ``specfair_kernels.ops.verify.launch`` on canonical inputs (what the public API
passes after validation), so the host-side checks are not part of the figures.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import torch


def inputs(B, K, V, dtype, dev, seed=0):
    g = torch.Generator(device=dev).manual_seed(seed)
    t = torch.randn(B, K + 1, V, device=dev, generator=g).mul_(3).to(dtype)
    d = (t[:, :K].float() + torch.randn(B, K, V, device=dev, generator=g)).to(dtype)
    tok = torch.randint(0, V, (B, K), device=dev, generator=g)
    nd = torch.full((B,), K, dtype=torch.int64, device=dev)
    temp = torch.ones(B, dtype=torch.float32, device=dev)
    seed_t = torch.arange(B, dtype=torch.int64, device=dev)
    step = torch.zeros(B, dtype=torch.int64, device=dev)
    return t, d, tok, nd, temp, seed_t, step


def copy_bandwidth(dev) -> float:
    import triton.testing as tt

    x = torch.empty(512 * 2**20, dtype=torch.uint8, device=dev)
    y = torch.empty_like(x)
    ms = tt.do_bench(lambda: y.copy_(x), warmup=50, rep=300)
    return 2 * x.numel() / (ms * 1e-3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    import triton.testing as tt

    from specfair_kernels.ops import verify as ov

    dev = torch.device("cuda")
    bw = copy_bandwidth(dev)
    res = {"device": torch.cuda.get_device_name(dev), "copy_bandwidth_GBps": bw / 1e9, "profile": [], "sweep": []}
    shapes = [(64, 4, 128256), (1, 4, 151936), (256, 8, 151936)]
    dtype = torch.bfloat16
    for (B, K, V), need_div in itertools.product(shapes, (False, True)):
        args = inputs(B, K, V, dtype, dev)
        nbytes = (B * (K + 1) + B * K) * V * 2
        floor_us = nbytes / bw * 1e6
        R = B * (K + 1)
        # 1. profile at the default configuration
        f = lambda **kw: ov.launch(*args, need_div, **kw)  # noqa: E731
        for _ in range(3):
            f()
        torch.cuda.synchronize()
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                f()
            torch.cuda.synchronize()
        per = {}
        for e in prof.key_averages():
            t_us = (getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0)) / 10
            if t_us > 0 and e.key.startswith("_"):     # our kernels: _tile_stats_kernel, ...
                per[e.key] = round(t_us, 2)
        cfg = ov.launch_config(R, V, dev)
        res["profile"].append({"B": B, "K": K, "V": V, "div": need_div, "floor_us": floor_us,
                               "default_config": cfg, "kernels_us": per})
        print(f"B={B} K={K} V={V} div={need_div} floor {floor_us:.1f} us, default {cfg}: {per}", flush=True)
        # 2. sweep
        blocks = (1024, 2048, 4096) if a.quick else (512, 1024, 2048, 4096)
        nts = (None, 1, 4) if a.quick else (None, 1, 2, 4, 8, 16)
        warps = (4, 8) if a.quick else (4, 8, 16)
        best = None
        for block, nt, nw in itertools.product(blocks, nts, warps):
            if block > triton_next_pow2(V):
                continue
            chunk = None if nt is None else -(-V // nt)
            try:
                ms = tt.do_bench_cudagraph(lambda: ov.launch(*args, need_div, block=block, chunk=chunk,
                                                             num_warps=nw), rep=30)
            except Exception as e:  # noqa: BLE001 - record and go on
                res["sweep"].append({"B": B, "K": K, "V": V, "div": need_div, "block": block, "nt": nt,
                                     "num_warps": nw, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                continue
            us = ms * 1e3
            rec = {"B": B, "K": K, "V": V, "div": need_div, "block": block, "nt": nt, "num_warps": nw,
                   "us": us, "x_floor": us / floor_us}
            res["sweep"].append(rec)
            if best is None or us < best["us"]:
                best = rec
        print(f"  best {best}", flush=True)
    out = os.path.join(os.environ.get("OUT", "."), "tune_verify.json")
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)
    print("wrote", out)


def triton_next_pow2(n: int) -> int:
    import triton

    return triton.next_power_of_2(n)


if __name__ == "__main__":
    sys.exit(main())
