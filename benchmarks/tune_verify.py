"""Where the time of the Triton `verify` goes, and which launch configuration is fastest.

Run on a CUDA machine (writes JSON to $OUT or ./tune_verify.json):

    python benchmarks/tune_verify.py [--quick]

1. Per-kernel GPU time (torch.profiler) of one call at the default configuration, for
   the README's shapes, tokens and divergence modes (`_verify_kernel`, the sync-word
   memset, and the per-task reduction of deterministic stats).
2. A sweep of (CHUNK, num_warps, WAVE) of `_verify_kernel` with each call replayed from a
   CUDA graph (``triton.testing.do_bench_cudagraph``), against the byte floor (both logits
   read once, at the measured copy bandwidth).  Configurations the launcher rejects are
   recorded with their error.

Calls ``specfair_kernels.ops.verify.launch`` on canonical inputs (what the public API
passes after validation), so the host-side checks are not part of the figures.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import sys

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
        f = functools.partial(ov.launch, *args, need_div)
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
            if t_us > 0:
                per[e.key] = round(t_us, 2)
        cfg = ov.launch_config(R, V, dev)
        res["profile"].append({"B": B, "K": K, "V": V, "div": need_div, "floor_us": floor_us,
                               "default_config": cfg, "kernels_us": per})
        print(f"B={B} K={K} V={V} div={need_div} floor {floor_us:.1f} us, default {cfg}: {per}", flush=True)
        # 2. sweep
        chunks = (None, 4096, 16384) if a.quick else (None, 2048, 4096, 8192, 16384)
        warps = (4, 8) if a.quick else (4, 8, 16)
        waves = (None,) if a.quick else (None, 8, 32, 128)
        best = None
        for chunk, nw, wave in itertools.product(chunks, warps, waves):
            cfg = {"chunk": chunk, "num_warps": nw, "wave": wave}
            try:
                ms = tt.do_bench_cudagraph(functools.partial(ov.launch, *args, need_div, **cfg), rep=30)
            except Exception as e:  # noqa: BLE001 - record and go on
                res["sweep"].append({"B": B, "K": K, "V": V, "div": need_div, **cfg,
                                     "error": f"{type(e).__name__}: {str(e)[:200]}"})
                continue
            us = ms * 1e3
            rec = {"B": B, "K": K, "V": V, "div": need_div, **cfg, "us": us, "x_floor": us / floor_us}
            res["sweep"].append(rec)
            if best is None or us < best["us"]:
                best = rec
        print(f"  best {best}", flush=True)
    out = os.path.join(os.environ.get("OUT", "."), "tune_verify.json")
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)
    print("wrote", out)


if __name__ == "__main__":
    sys.exit(main())
