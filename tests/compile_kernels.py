"""Compile every Triton kernel variant for sm_90 ahead of time, without a GPU.

Run with TRITON_INTERPRET unset (tests/kernels/test_triton_compile.py does, in a subprocess):
``python tests/compile_kernels.py`` prints one line per variant and exits non-zero on a
compile error or a register spill.
"""
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 64)
VERIFY = "specfair_kernels.ops.verify"
DIVERGENCE = "specfair_kernels.ops.divergence"
STREAMING_KERNELS = {"_verify_kernel", "_divergence_rows_kernel", "_split_stats_kernel", "_split_sweep_kernel",
                     "_split_finish_kernel"}
"""Kernels whose loops stream the vocabulary: benchmarks/roofline.py (and any SASS budget tool)
holds their hot loops to the per-logit instruction budget.  The other kernels merge partials
or finish rows.  Rename here, and only here, when a kernel is renamed or replaced."""


BLOCK_MODES = ("tokens", "stats_deterministic")
"""Modes whose block-verification variant (BLOCK=True) is compiled too; see `variants`."""


def _p(t):
    return "*" + t


def compile_kernel(module, name, signature, constexprs, num_warps=4):
    """Compile one variant to a cubin; returns ptxas's register line; raises on spills."""
    import importlib

    fn = getattr(importlib.import_module(module), name)
    src = ASTSource(fn=fn, signature={**signature, **{k: "constexpr" for k in constexprs}}, constexprs=constexprs)
    kernel = triton.compile(src, target=TARGET, options=dict(num_warps=num_warps))
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(kernel.asm["ptx"])
    try:
        out = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", f.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    finally:
        os.unlink(f.name)
    if any(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", out)):
        raise RuntimeError(f"{name} {constexprs} spills registers:\n{out}")
    return re.findall(r"Used \d+ registers", out)[-1]


def verify_variant(dtype, has_draft, mode, method="token"):
    """(signature, constexprs, num_warps) of `_verify_kernel` as the launcher compiles it for a
    large batch on the GPU (8 warps, 128-bit aligned rows); mode as in ops.verify.MODES, method
    "token" or "block" (the BLOCK variant)."""
    from specfair_kernels.ops import verify as ov

    sig = dict(target_ptr=_p(dtype), draft_ptr=_p(dtype), xtok_ptr="*i64", num_draft_ptr="*i64", temp_ptr="*fp32",
               seed_ptr="*i64", step_ptr="*i64", part_ptr="*fp32", pidx_ptr="*i32", posf_ptr="*fp32",
               row_ptr="*i32", q2_ptr="*fp32", race_f_ptr="*fp32", race_i_ptr="*i32",
               ticket_ptr="*i32", reqcnt_ptr="*i32", ready_ptr="*i32", fincnt_ptr="*i32",
               out_tokens_ptr="*i64", out_nacc_ptr="*i32", out_nemit_ptr="*i32", div_ptr="*fp32",
               task_ptr="*i64", counts_ptr="*i64", hist_ptr="*i64", sums_ptr="*fp64", rowsum_ptr="*fp64",
               B="i32", K="i32", V="i32", NT="i32", CHUNK="i32", WAVE="i32", HIST_W="i32")
    return sig, ov.variant_constexprs(4 if dtype == "fp32" else 2, has_draft, mode, method), 8


def variants():
    for dtype in ("fp32", "bf16", "fp16"):
        for has_draft in (True, False):
            for mode in ("tokens", "divergence", "stats", "stats_deterministic"):
                # Block variants for the two modes at the ends (every flag off, every flag on):
                # BLOCK's code meets NEED_DIV only, and HAS_STATS/DETERMINISTIC's code does not
                # depend on BLOCK, so the middle modes add compile time (minutes) and no coverage.
                for method in ("token", "block") if mode in BLOCK_MODES else ("token",):
                    sig, const, warps = verify_variant(dtype, has_draft, mode, method)
                    yield VERIFY, "_verify_kernel", sig, const, warps
    yield (VERIFY, "_task_reduce_kernel", dict(task_ptr="*i64", rowsum_ptr="*fp64", sums_ptr="*fp64", B="i32"),
           dict(BLOCK_B=256), 4)
    from specfair_kernels.ops import divergence as od

    # Every launch of token_divergence for one program per row (N=8192) and for the split
    # path (N=16), as work_model describes them.  Loop-less variants (the CE/KL sweep and
    # alpha/tv finish without a gradient) are compiled for fp32 only: sass_budget reads the
    # bf16 variants and expects a vocabulary loop in each.
    seen = set()
    for dtype, elem_bytes in (("fp32", 4), ("bf16", 2)):
        logits = dict(draft_ptr=_p(dtype), target_ptr=_p(dtype))
        sigs = {
            "_divergence_rows_kernel": dict(**logits, value_ptr="*fp32", grad_ptr=_p(dtype), temperature="fp32"),
            "_split_stats_kernel": dict(**logits, part_ptr="*fp32", temperature="fp32"),
            "_split_sweep_kernel": dict(**logits, part_ptr="*fp32", sums_ptr="*fp32", value_ptr="*fp32",
                                        grad_ptr=_p(dtype), temperature="fp32"),
        }
        sigs["_split_finish_kernel"] = sigs["_split_sweep_kernel"]
        # the backward's row scaling: ptxas unrolls its tile loop completely, so it has no hot
        # loop and, loop-less, is compiled for fp32 only
        sigs["_scale_rows_kernel"] = dict(grad_ptr=_p(dtype), scale_ptr="*fp32")
        for N in (8192, 16):
            for kind in od.KIND_CODES:
                for need_grad in (True, False):
                    for launch in od.work_model(N, 128256, elem_bytes, kind, need_grad):
                        key = (dtype, launch["kernel"], tuple(launch["constexprs"].items()))
                        if key in seen or (dtype == "bf16" and not launch["loops"]):
                            continue
                        seen.add(key)
                        yield (DIVERGENCE, launch["kernel"], sigs[launch["kernel"]], launch["constexprs"],
                               launch["num_warps"])


ONES = ("B", "K", "V", "NT", "WAVE", "HIST_W")
"""Integer arguments that can be 1 at run time.  Triton specialises an integer argument
equal to 1 into a compile-time constant, so kernel code must not call methods such as
``.to()`` on them (B=1 broke ``_finish_kernel`` on the GPU while every B > 1 compiled)."""


def with_ones():
    """Every variant, plus each fp32 variant again with its ONES arguments equal to 1."""
    for module, name, sig, const, warps in variants():
        yield module, name, sig, const, warps
        ones = [k for k in ONES if k in sig]
        if ones and sig.get("target_ptr", "*fp32") == "*fp32" and sig.get("draft_ptr", "*fp32") == "*fp32":
            yield (module, name, {k: v for k, v in sig.items() if k not in ones},
                   {**const, **{k: 1 for k in ones}}, warps)


def main():
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    n = 0
    for module, name, sig, const, warps in with_ones():
        regs = compile_kernel(module, name, sig, const, warps)
        print(f"{name:<22} warps={warps} {const}: {regs}")
        n += 1
    print(f"compiled {n} kernel variants for sm_90, no register spills")


if __name__ == "__main__":
    main()
