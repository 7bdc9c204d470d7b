"""Which tile and eviction policy suit the Triton `token_divergence` on this GPU.

Run on a CUDA machine (writes JSON to $OUT or ./tune_divergence.json):

    python benchmarks/tune_divergence.py [evict_first]

For N=8192, V=128256 bf16 and each kind, the forward with its gradient
(``ops.divergence.launch``) at tiles of 2048, 4096 (the default) and 8192 logits, with or
without (the default) ``evict_first`` on each row's last read, against the byte floor (both logits read
once and the gradient written once, at the measured copy bandwidth); then the backward's
``scale_rows_`` against the eager ``mul_`` + ``masked_fill_`` it replaces.  The eviction
policy is a compile-time global of the kernels, so each policy runs in its own process.
"""
from __future__ import annotations

import functools
import json
import os
import sys

import torch


def main() -> int:
    import triton.language as tl
    import triton.testing as tt

    from specfair_kernels.ops import divergence as od

    evict = sys.argv[1] if len(sys.argv) > 1 else ""
    od.LAST_READ_EVICTION = tl.constexpr(evict)   # before the first compilation
    dev = torch.device("cuda")
    src = torch.empty(512 * 2**20, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    bw = 2 * src.numel() / (tt.do_bench(functools.partial(dst.copy_, src), warmup=20, rep=200) * 1e-3)
    del src, dst
    N, V = 8192, 128256
    g = torch.Generator(device=dev).manual_seed(0)
    t = (2 * torch.randn(N, V, device=dev, generator=g)).to(torch.bfloat16)
    d = (t.float() + torch.randn(N, V, device=dev, generator=g)).to(torch.bfloat16)
    floor_us = 3 * N * V * 2 / bw * 1e6
    res = {"device": torch.cuda.get_device_name(dev), "copy_bandwidth_GBps": bw / 1e9, "N": N, "V": V,
           "floor_us": floor_us, "forward": [], "backward": {}}
    for kind in ("ce", "kl", "alpha"):
        for block in (4096, 2048, 8192):
            us = tt.do_bench(functools.partial(od.launch, d, t, kind, 1.0, True, block=block), warmup=3, rep=30)
            rec = {"evict": evict or "-", "kind": kind, "block": block, "us": us * 1e3,
                   "x_floor": us * 1e3 / floor_us}
            res["forward"].append(rec)
            print(rec, flush=True)
    _, grad = od.launch(d, t, "ce", 1.0, True)
    go = torch.full((N,), 1.0 / N, device=dev)
    res["backward"]["scale_rows_us"] = tt.do_bench(lambda: od.scale_rows_(grad, go)) * 1e3
    res["backward"]["mul_masked_fill_us"] = tt.do_bench(
        lambda: grad.mul_(go[:, None]).masked_fill_(go[:, None] == 0, 0)) * 1e3
    print(res["backward"], flush=True)
    out = os.path.join(os.environ.get("OUT", "."), f"tune_divergence{'_' + evict if evict else ''}.json")
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
