#!/usr/bin/env python3
"""Roofline report of the Triton kernels, from SASS compiled for sm_90 on a CPU (no GPU needed).

Every vocabulary-streaming kernel variant (``STREAMING_KERNELS`` and ``variants()`` in
``tests/compile_kernels.py``) is compiled for sm_90 with Triton's ``ASTSource``, assembled with
the ptxas that Triton bundles (``-v``: registers, spills) and disassembled with its cuobjdump.
A *hot loop* is a backward branch whose body holds at least two loads of logits (16-bit or
vector loads for 16-bit logits); per hot loop the report gives

  SASS instructions per logit   body instructions / logits loaded per thread per iteration
  MUFU per logit                special-function ops (exp, log, rcp) per logit
  BAR, SHFL per iteration       block barriers and warp shuffles in the body
  loads                         the load instructions and their width (LDG.E.U16 = one bf16,
                                LDG.E.128 = eight)

Then, for every GPU benchmark shape of ``bench_verify.py`` / ``bench_divergence.py`` (DESIGN.md's
bar among them), a predicted time per GPU:

  predicted = sum over launches of max(DRAM bytes / bandwidth, issued instructions / issue rate)
              + launches x per-launch overhead
  issued instructions of a loop = its SASS instructions per logit x the logits it processes
                                  over the whole grid

beside the measured time wherever ``benchmarks/results/gpu_*.json`` holds one (the triton
provider; CUDA-graph replay when recorded).  The work per launch (kernels, grid, elements per
loop, DRAM and L2 bytes) comes from ``work_model()`` in the ops modules, beside the
launchers it describes.

    python benchmarks/roofline.py [--quick] [--json OUT] [--markdown OUT] [--max-instr 12]
                                  [--launch-us 2] [--specialize none|runtime]

Exit status 1 when a streaming hot loop is above ``--max-instr`` SASS instructions per logit,
holds a block barrier, a compiled variant spills registers, or a streaming variant has no hot
loop to measure; 2 when the CUDA tools (ptxas, cuobjdump) are missing.  TRITON_INTERPRET must
be unset (the script unsets it for itself).

``--specialize none`` (default) compiles as ``tests/compile_kernels.py`` does: no alignment
assumed, so loads are vectorised only where the kernel proves alignment itself.
``--specialize runtime`` compiles each benchmark shape as Triton's launcher would on the GPU:
pointers 16-byte aligned, integer arguments divisible by 16 marked so, arguments equal to 1
made constants (it needs ``int_args`` in the work model).
"""
from __future__ import annotations

import argparse
import collections
import importlib
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"

# --- figures ----------------------------------------------------------------------------------
# Issue rate: 132 SMs x 4 schedulers x 32 lanes x ~1.98 GHz ~= 33e12 thread-instructions/s
# (DESIGN.md).  DRAM: the datasheet HBM bandwidth of the SXM parts.
GPUS = {
    "H100": {"name": "H100 SXM, HBM3", "dram_bytes_per_s": 3.35e12, "issue_per_s": 33e12, "num_sms": 132},
    "H200": {"name": "H200 SXM, HBM3e", "dram_bytes_per_s": 4.8e12, "issue_per_s": 33e12, "num_sms": 132},
}
LAUNCH_US = 2.0
"""Assumed cost of one kernel launch under CUDA-graph replay (launch, ramp-up, drain of a
dependent kernel); it is what bounds a tiny shape such as B=1."""
DEFAULT_MAX_INSTR = 12.0
ELEM_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
OPS = {"verify": "specfair_kernels.ops.verify", "token_divergence": "specfair_kernels.ops.divergence"}

# --- SASS parsing (pure text; unit-tested on handwritten SASS) --------------------------------
_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);")
_PREDICATE = re.compile(r"^@!?U?P[T0-9]+\s+")
_BRANCH = re.compile(r"\bBRA\b[^0-9]*0x([0-9a-f]+)")
_LOAD_BYTES = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "32": 4, "64": 8, "128": 16}


def sass_instructions(text: str) -> list[tuple[int, str]]:
    """(address, instruction) for every instruction in cuobjdump -sass output."""
    return [(int(addr, 16), ins.strip()) for addr, ins in _SASS_LINE.findall(text)]


def opcode(instruction: str) -> str:
    """The opcode with its modifiers, predicate removed: '@!P0 LDG.E.U16 R1, ...' -> 'LDG.E.U16'."""
    return _PREDICATE.sub("", instruction).split()[0]


def global_load_bytes(op: str) -> int | None:
    """Bytes one thread loads with a global load opcode (None for anything else).
    Cache and ordering modifiers (EF, EL, LU, STRONG.GPU, CONSTANT...) do not change the width."""
    parts = op.split(".")
    if parts[0] != "LDG":
        return None
    for p in parts[1:]:
        if p in _LOAD_BYTES:
            return _LOAD_BYTES[p]
    return 4


def _loads_logits(nbytes: int, elem_bytes: int) -> bool:
    # one logit (LDG.E.U16 for 16-bit logits, LDG.E for fp32) or a vector of them; a 32-bit load
    # in a 16-bit kernel is an fp32 partial or an index, as in the yardstick
    return nbytes == elem_bytes or nbytes >= 8


def hot_loops(sass: str, elem_bytes: int = 2) -> list[dict]:
    """The loops that stream logits, in the order of their closing branch.

    A loop is a branch to a lower address; it is hot when its body (target .. branch) holds at
    least two loads of logits.  Logits per iteration = bytes all its global loads bring per
    thread / elem_bytes.  ``contains`` counts the hot loops nested inside (0 = innermost).
    """
    lines = sass_instructions(sass)
    where = {addr: i for i, (addr, _) in enumerate(lines)}
    loops = []
    for i, (addr, ins) in enumerate(lines):
        m = _BRANCH.search(ins)
        if not m:
            continue
        target = int(m.group(1), 16)
        if target >= addr or target not in where:
            continue
        ops = [opcode(x) for _, x in lines[where[target]:i + 1]]
        loads = [(op, global_load_bytes(op)) for op in ops if global_load_bytes(op) is not None]
        if sum(_loads_logits(b, elem_bytes) for _, b in loads) < 2:
            continue
        logits = sum(b for _, b in loads) / elem_bytes
        kinds = collections.Counter(op.split(".")[0] for op in ops)
        loops.append({
            "start": target, "end": addr, "instrs": len(ops), "logits": logits,
            "per_logit": len(ops) / logits, "MUFU": kinds["MUFU"], "mufu_per_logit": kinds["MUFU"] / logits,
            "BAR": kinds["BAR"], "SHFL": kinds["SHFL"], "branches": kinds["BRA"], "LDG": len(loads),
            "loads": dict(collections.Counter(op for op, _ in loads)),
        })
    for lp in loops:
        lp["contains"] = sum(o is not lp and lp["start"] <= o["start"] and o["end"] <= lp["end"] for o in loops)
    return loops


def parse_ptxas(log: str) -> dict:
    """Registers, spill and stack bytes from `ptxas -v` output (the last function reported)."""
    regs = re.findall(r"Used (\d+) registers", log)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    stack = re.findall(r"(\d+) bytes stack frame", log)
    return {"registers": int(regs[-1]) if regs else None,
            "spill_stores": int(spills[-1][0]) if spills else 0,
            "spill_loads": int(spills[-1][1]) if spills else 0,
            "stack_bytes": int(stack[-1]) if stack else 0}


def programs_per_sm(registers: int | None, num_warps: int, shared_bytes: int = 0) -> int | None:
    """Resident programs per sm_90 SM: 64K registers (8 per thread granularity), 64 warps,
    32 blocks, 228 KiB shared memory (1 KiB reserved per block)."""
    if not registers:
        return None
    by_regs = (65536 // (math.ceil(registers / 8) * 8 * 32)) // num_warps
    by_smem = (228 * 1024) // (shared_bytes + 1024)
    return max(0, min(32, 64 // num_warps, by_regs, by_smem))


# --- the work per launch --------------------------------------------------------------------------
# work_model(...) -> [one dict per launch of one call, in launch order]:
#   {"kernel": name, "constexprs": {...as in compile_kernels.variants()}, "num_warps": int,
#    "programs": grid size, "loops": [{"elements": int}, ...] (vocabulary loops in source order;
#    elements = logits the loop loads over the whole grid, masked tail lanes included),
#    "dram_bytes": int, "l2_bytes": int (re-reads expected to hit L2),
#    optional "int_args": {runtime integer arguments, for --specialize runtime},
#    optional "note": a caveat printed with the shapes that run this launch}
# Launches that are not Triton kernels (e.g. a torch op in the backward) are listed too, with
# no loops, so that their bytes and launch count enter the prediction.
WORK_KEYS = ("kernel", "constexprs", "num_warps", "programs", "loops", "dram_bytes", "l2_bytes")


def work_model(op: str, **shape) -> tuple[list[dict], str]:
    """(launches, where the model came from) for one call of `op` at `shape`."""
    module = importlib.import_module(OPS[op])
    entries = module.work_model(**shape)
    check_work_model(entries)
    return entries, f"{OPS[op]}.work_model"


def check_work_model(entries) -> None:
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"work_model must return a non-empty list of launches, got {entries!r}")
    for e in entries:
        missing = [k for k in WORK_KEYS if k not in e]
        if missing:
            raise ValueError(f"work_model launch {e.get('kernel', e)!r} lacks {missing}")
        if not all(isinstance(lp, dict) and isinstance(lp.get("elements"), int) for lp in e["loops"]):
            raise ValueError(f"work_model launch {e['kernel']!r}: loops must be [{{'elements': int}}, ...]")




# --- compiling ----------------------------------------------------------------------------------

def load_compile_kernels():
    """tests/compile_kernels.py, the project's list of kernel variants."""
    spec = importlib.util.spec_from_file_location("_roofline_compile_kernels", ROOT / "tests" / "compile_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cuda_tools():
    """(ptxas, cuobjdump) paths bundled with Triton, or None."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        ptxas = get_ptxas(90).path
    except Exception:
        return None
    cuobjdump = os.path.join(os.path.dirname(ptxas), "cuobjdump")
    return (ptxas, cuobjdump) if os.path.exists(ptxas) and os.path.exists(cuobjdump) else None


def logit_dtype(signature: dict) -> str:
    for t in ("bf16", "fp16"):
        if "*" + t in signature.values():
            return t
    return "fp32"


class Compiler:
    """Compiles each (kernel, signature, constexprs, warps, specialisation) once per run."""

    def __init__(self, ck):
        self.ck = ck
        tools = cuda_tools()
        if tools is None:
            raise RuntimeError("Triton's CUDA backend (ptxas, cuobjdump) is not available")
        self.ptxas, self.cuobjdump = tools
        self.cache = {}

    def compile(self, module, name, signature, constexprs, num_warps, attrs=None):
        key = (module, name, tuple(sorted(signature.items())), tuple(sorted(constexprs.items())), num_warps,
               tuple(sorted(attrs)) if attrs else ())
        if key not in self.cache:
            self.cache[key] = self._compile(module, name, signature, constexprs, num_warps, attrs)
        return self.cache[key]

    def _compile(self, module, name, signature, constexprs, num_warps, attrs):
        import triton
        from triton.compiler import ASTSource

        fn = getattr(importlib.import_module(module), name)
        sig = {**signature, **{k: "constexpr" for k in constexprs}}
        tattrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in (attrs or ())}
        src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=tattrs)
        kernel = triton.compile(src, target=self.ck.TARGET, options=dict(num_warps=num_warps))
        with tempfile.TemporaryDirectory() as d:
            ptx, cubin = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
            with open(ptx, "w") as f:
                f.write(kernel.asm["ptx"])
            with open(cubin, "wb") as f:
                f.write(kernel.asm["cubin"])
            log = subprocess.run([self.ptxas, "-arch=sm_90a", "-v", ptx, "-o", os.devnull],
                                 capture_output=True, text=True, check=True).stderr
            sass = subprocess.run([self.cuobjdump, "-sass", cubin], capture_output=True, text=True,
                                  check=True).stdout
        return {"sass": sass, "ptxas": parse_ptxas(log), "shared_bytes": int(getattr(kernel.metadata, "shared", 0))}


# --- benchmark shapes and committed GPU results --------------------------------------------------

def _load_bench(name):
    spec = importlib.util.spec_from_file_location(f"_roofline_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bench_shapes() -> list[dict]:
    """The GPU shapes of bench_verify.py and bench_divergence.py (their CUDA lists)."""
    old = os.environ.get("SPECFAIR_BENCH_DEVICE")
    os.environ["SPECFAIR_BENCH_DEVICE"] = "cuda"
    try:
        bv, bd = _load_bench("bench_verify"), _load_bench("bench_divergence")
    finally:
        if old is None:
            os.environ.pop("SPECFAIR_BENCH_DEVICE", None)
        else:
            os.environ["SPECFAIR_BENCH_DEVICE"] = old
    rows = []
    for B, K, V, dtype, tag in bv.SHAPES:
        for mode in bv.MODES:
            for method in bv.METHODS:
                rows.append({"op": "verify", "shape": {"B": B, "K": K, "V": V}, "mode": mode, "method": method,
                             "dtype": dtype, "tag": tag, "floor_bytes": bv.verify_bytes(B, K, V, ELEM_BYTES[dtype],
                                                                                        mode)})
    for N, V, dtype, tag in bd.SHAPES:
        for kind in bd.KINDS:
            # bench_divergence's bytes_moved: both logits read once, the gradient written once
            rows.append({"op": "token_divergence", "shape": {"N": N, "V": V}, "mode": kind, "dtype": dtype,
                         "tag": tag, "floor_bytes": 3 * N * V * ELEM_BYTES[dtype]})
    return rows


def shape_work(row, num_sms):
    eb = ELEM_BYTES[row["dtype"]]
    if row["op"] == "verify":
        # block: the worst case, every drafted position a candidate (races and residual masses at all K)
        block = row.get("method") == "block"
        return work_model("verify", **row["shape"], elem_bytes=eb, mode=row["mode"], num_sms=num_sms,
                          method=row.get("method", "token"), candidates=row["shape"]["K"] if block else 1.0)
    return work_model("token_divergence", **row["shape"], elem_bytes=eb, kind=row["mode"], need_grad=True,
                      num_sms=num_sms)


def gpu_of(device: str) -> str | None:
    for gpu in GPUS:
        if gpu in device:
            return gpu
    return None


def _mode_str(row) -> str:
    """The mode column: verify's block rows say so (``tokens/block``)."""
    return row["mode"] + ("/block" if row.get("method") == "block" else "")


def _record_key(op, shape, mode, dtype, method="token"):
    """Records of verify's method="token" (and those saved before verify had ``method``) share
    the key of the token rows."""
    return (op, mode, dtype, method or "token") + tuple(sorted(shape.items()))


def measured_times(results_dir=RESULTS_DIR) -> dict:
    """{record key: {gpu: {"us", "launch", "device", "file"}}}: the triton provider's median,
    CUDA-graph replay where recorded (DESIGN.md's bar), else eager."""
    out = {}
    for path in sorted(Path(results_dir).glob("gpu_*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for rec in data.get("benchmarks", []) if isinstance(data, dict) else []:
            info = rec.get("extra_info", {})
            gpu = gpu_of(info.get("device", ""))
            if gpu is None or info.get("provider") != "triton" or "median" not in rec.get("stats", {}):
                continue
            dims = ("B", "K", "V") if info.get("op") == "verify" else ("N", "V")
            if any(d not in info for d in dims):
                continue
            key = _record_key(info.get("op"), {d: info[d] for d in dims}, info.get("mode"), info.get("dtype"),
                              info.get("method"))
            old = out.setdefault(key, {}).get(gpu)
            if old is not None and old["launch"] == "graph" and info.get("launch") != "graph":
                continue
            out[key][gpu] = {"us": rec["stats"]["median"] * 1e6, "launch": info.get("launch"),
                             "device": info.get("device"), "file": str(path.relative_to(ROOT))
                             if path.is_relative_to(ROOT) else str(path)}
    return out


# --- prediction -------------------------------------------------------------------------------------

def issued_instructions(work_loops: list[dict], sass_loops: list[dict] | None):
    """(thread-instructions over the grid, note) for one launch.  Work-model loops are matched to
    the innermost SASS hot loops in address order; when the counts differ, every element is
    charged the kernel's worst hot loop."""
    elements = [lp["elements"] for lp in work_loops]
    if not elements:
        return 0.0, None
    if not sass_loops:
        return None, "no SASS hot loop measured: issue time not modelled"
    inner = sorted((lp for lp in sass_loops if lp["contains"] == 0), key=lambda lp: lp["start"])
    if len(inner) == len(elements):
        return sum(lp["per_logit"] * n for lp, n in zip(inner, elements)), None
    worst = max(lp["per_logit"] for lp in sass_loops)
    return worst * sum(elements), (f"{len(elements)} work-model loops vs {len(inner)} SASS hot loops: "
                                   f"worst loop ({worst:.1f} instr/logit) charged for all elements")


def predict(entries: list[dict], issued: list[float | None], gpu: dict, launch_us: float) -> dict:
    """Predicted microseconds for one call: per launch max(memory, issue), plus launch overhead."""
    mem_us = issue_us = body_us = 0.0
    for e, n in zip(entries, issued):
        m = e["dram_bytes"] / gpu["dram_bytes_per_s"] * 1e6
        i = (n or 0.0) / gpu["issue_per_s"] * 1e6
        mem_us += m
        issue_us += i
        body_us += max(m, i)
    launches = len(entries) * launch_us
    us = body_us + launches
    bound = "launch" if launches >= body_us else ("issue" if issue_us > mem_us else "memory")
    return {"us": us, "mem_us": mem_us, "issue_us": issue_us, "launch_us": launches, "bound": bound}


# --- the report ----------------------------------------------------------------------------------------

def _flags(constexprs: dict, aligned=()) -> str:
    flags = " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in constexprs.items())
    return flags + (" (aligned)" if aligned else "")


def _loads(lp: dict) -> str:
    return " ".join(f"{n}x{op}" for op, n in lp["loads"].items())


class Report:
    def __init__(self, quick=False, max_instr=DEFAULT_MAX_INSTR, launch_us=LAUNCH_US, specialize="none",
                 results_dir=RESULTS_DIR, gpus=None):
        self.quick, self.max_instr, self.launch_us, self.specialize = quick, max_instr, launch_us, specialize
        self.results_dir = results_dir
        self.gpus = gpus or GPUS
        self.ck = load_compile_kernels()
        streaming = getattr(self.ck, "STREAMING_KERNELS", None)
        if not streaming:
            raise RuntimeError("tests/compile_kernels.py names no STREAMING_KERNELS")
        self.streaming = set(streaming)
        self.variants = list(self.ck.variants())
        self.compiler = Compiler(self.ck)
        self.rows = {}  # variant key -> measured row
        self.notes = []

    # one compiled variant, measured
    def measure(self, module, name, sig, cx, warps, attrs=(), origin="compile_kernels.variants()"):
        key = (module, name, tuple(sorted(sig.items())), tuple(sorted(cx.items())), warps, tuple(sorted(attrs)))
        if key in self.rows:
            return self.rows[key]
        dtype = logit_dtype(sig)
        row = {"kernel": name, "module": module, "dtype": dtype, "constexprs": dict(cx), "num_warps": warps,
               "aligned_args": sorted(attrs), "origin": origin}
        try:
            c = self.compiler.compile(module, name, sig, cx, warps, attrs)
        except Exception as exc:  # a variant that does not compile is a finding, not a crash
            row.update(error=f"{type(exc).__name__}: {exc}"[:2000], loops=[])
        else:
            row.update(c["ptxas"], shared_bytes=c["shared_bytes"],
                       programs_per_sm=programs_per_sm(c["ptxas"]["registers"], warps, c["shared_bytes"]),
                       loops=hot_loops(c["sass"], 4 if dtype == "fp32" else 2))
        self.rows[key] = row
        return row

    def find_variant(self, module, entry, dtype):
        same = [v for v in self.variants if v[0] == module and v[1] == entry["kernel"] and logit_dtype(v[2]) == dtype]
        for _, _, sig, cx, _ in same:
            if cx == entry["constexprs"]:
                return sig, "compile_kernels.variants()"
        if same:  # a constexpr combination the list lacks: same signature, the work model's values
            return same[0][2], "work model's constexprs on a compile_kernels.variants() signature"
        return None, None

    def shape_variant(self, module, entry, dtype):
        sig, origin = self.find_variant(module, entry, dtype)
        if sig is None:
            self.notes.append(f"{entry['kernel']} ({dtype}, {_flags(entry['constexprs'])}): no variant in "
                              "tests/compile_kernels.py to compile; its issue time is not modelled")
            return None
        cx, attrs = dict(entry["constexprs"]), []
        if self.specialize == "runtime":
            ints = entry.get("int_args")
            if ints is None:
                self.notes.append(f"{entry['kernel']}: the work model gives no int_args; runtime "
                                  "specialisation marks pointers only")
                ints = {}
            sig = dict(sig)
            for a, v in ints.items():
                if a in sig and v == 1:  # Triton turns an integer argument equal to 1 into a constant
                    del sig[a]
                    cx[a] = 1
                elif a in sig and v % 16 == 0:
                    attrs.append(a)
            attrs += [a for a, t in sig.items() if t.startswith("*")]
            origin += ", runtime specialisation"
        return self.measure(module, entry["kernel"], sig, cx, entry["num_warps"], attrs, origin)

    def run(self) -> dict:
        if not self.quick:
            for module, name, sig, cx, warps in self.variants:
                if name in self.streaming:
                    attrs = [a for a, t in sig.items() if t.startswith("*")] if self.specialize == "runtime" else []
                    self.measure(module, name, sig, cx, warps, attrs)
        measured = measured_times(self.results_dir)
        shapes = []
        for row in bench_shapes():
            if self.quick and row["dtype"] != "bfloat16":
                self.notes.append(f"--quick: {row['op']} {row['shape']} {row['mode']} {row['dtype']} skipped")
                continue
            shapes.append(self.shape_row(row, measured))
        variant_rows = list(self.rows.values())
        return {
            "gpus": self.gpus, "launch_overhead_us": self.launch_us, "max_instr_per_logit": self.max_instr,
            "specialize": self.specialize, "quick": self.quick, "streaming_kernels": sorted(self.streaming),
            "tools": self.tool_versions(), "variants": variant_rows, "shapes": shapes,
            "shortfalls": self.shortfalls(variant_rows), "notes": list(dict.fromkeys(self.notes)),
        }

    def shape_row(self, row, measured):
        module = OPS[row["op"]]
        num_sms = next(iter(self.gpus.values()))["num_sms"]
        entries, source = shape_work(row, num_sms)
        dtype = SHORT_DTYPE[row["dtype"]]
        kernels, issued, notes = [], [], []
        for e in entries:
            sass_loops, variant = None, None
            if e["kernel"] in self.streaming:
                variant = self.shape_variant(module, e, dtype)
                sass_loops = variant["loops"] if variant else None
            elif e["loops"]:
                notes.append(f"{e['kernel']} has loops but is not in STREAMING_KERNELS: issue time not modelled")
            n, note = issued_instructions(e["loops"], sass_loops)
            for x in (note, e.get("note")):
                if x:
                    notes.append(f"{e['kernel']}: {x}")
            issued.append(n)
            kernels.append({"kernel": e["kernel"], "constexprs": e["constexprs"], "num_warps": e["num_warps"],
                            "programs": e["programs"], "elements": [lp["elements"] for lp in e["loops"]],
                            "dram_bytes": e["dram_bytes"], "l2_bytes": e["l2_bytes"], "issued": n,
                            "registers": variant.get("registers") if variant else None})
        key = _record_key(row["op"], row["shape"], row["mode"], row["dtype"], row.get("method"))
        out = dict(row, work_model=source, kernels=kernels, launches=len(entries),
                   dram_bytes=sum(e["dram_bytes"] for e in entries), l2_bytes=sum(e["l2_bytes"] for e in entries),
                   issued=sum(n or 0.0 for n in issued), notes=notes, predicted={}, floor_us={}, measured={})
        for g, spec in self.gpus.items():
            out["predicted"][g] = predict(entries, issued, spec, self.launch_us)
            out["floor_us"][g] = row["floor_bytes"] / spec["dram_bytes_per_s"] * 1e6
        for g, m in measured.get(key, {}).items():
            out["measured"][g] = dict(m, over_predicted=m["us"] / out["predicted"][g]["us"]) if g in self.gpus else m
        return out

    def shortfalls(self, variant_rows):
        bad = []
        for r in variant_rows:
            if r["kernel"] not in self.streaming:
                continue
            what = f"{r['kernel']} {r['dtype']} {_flags(r['constexprs'])}"
            if "error" in r:
                bad.append(f"{what}: does not compile: {r['error'][:300]}")
                continue
            if r["spill_stores"] or r["spill_loads"]:
                bad.append(f"{what}: spills registers ({r['spill_stores']} B stores, {r['spill_loads']} B loads)")
            # As in the SASS yardstick, the budget is judged on 16-bit logits: a loop-less
            # variant (e.g. a sweep without a gradient) is listed in fp32 only, on purpose.
            if not r["loops"] and r["dtype"] != "fp32":
                bad.append(f"{what}: no hot loop found (cannot measure it)")
            for i, lp in enumerate(r["loops"]):
                if lp["per_logit"] > self.max_instr:
                    bad.append(f"{what}: loop {i}: {lp['per_logit']:.2f} SASS instr/logit > {self.max_instr:g}")
                if lp["BAR"]:
                    bad.append(f"{what}: loop {i}: {lp['BAR']} block barriers per iteration")
        return bad

    @staticmethod
    def tool_versions():
        import triton

        tools = cuda_tools()
        ver = subprocess.run([tools[0], "--version"], capture_output=True, text=True).stdout.strip().splitlines()
        return {"triton": triton.__version__, "ptxas": ver[-1] if ver else "?", "target": "sm_90a"}


# --- output ---------------------------------------------------------------------------------------------

def _shape_str(s):
    return ",".join(f"{k}={v}" for k, v in s["shape"].items())


def format_text(rep: dict) -> str:
    out = []
    t = rep["tools"]
    g = rep["gpus"]
    out.append(f"Roofline of the Triton kernels: SASS for {t['target']} compiled on the CPU "
               f"(Triton {t['triton']}, {t['ptxas']}), specialisation: {rep['specialize']}")
    out.append("GPUs: " + "; ".join(f"{k} {v['dram_bytes_per_s'] / 1e12:g} TB/s DRAM, "
                                    f"{v['issue_per_s']:.3g} thread-instr/s" for k, v in g.items())
               + f"; {rep['launch_overhead_us']:g} us per launch")
    out.append("")
    out.append(f"Streaming kernel variants, per hot loop (budget {rep['max_instr_per_logit']:g} SASS instr/logit, "
               "no block barrier, no spill):")
    out.append(f"{'kernel':<24} {'dt':<4} {'constexprs':<44} {'w':>2} {'regs':>4} {'spill':>5} {'P/SM':>4} | "
               f"{'loop':>4} {'instr/logit':>11} {'MUFU/logit':>10} {'BAR':>3} {'SHFL':>4}  loads")
    for r in rep["variants"]:
        flags = _flags(r["constexprs"], r.get("aligned_args"))
        head = (f"{r['kernel']:<24} {r['dtype']:<4} {flags[:44]:<44} {r['num_warps']:>2} "
                f"{r.get('registers') or '-':>4} {r.get('spill_stores', 0) + r.get('spill_loads', 0):>5} "
                f"{r.get('programs_per_sm') or '-':>4} | ")
        if "error" in r:
            out.append(head + "compile error: " + r["error"].splitlines()[0][:80])
            continue
        if not r["loops"]:
            out.append(head + "no hot loop found")
        for i, lp in enumerate(r["loops"]):
            over = "  OVER" if lp["per_logit"] > rep["max_instr_per_logit"] or lp["BAR"] else ""
            out.append((head if i == 0 else " " * (len(head) - 2) + "| ")
                       + f"{i:>4} {lp['per_logit']:>11.2f} {lp['mufu_per_logit']:>10.2f} {lp['BAR']:>3} "
                       f"{lp['SHFL']:>4}  {_loads(lp)}{over}")
    out.append("")
    gpus, seen = list(g), _measured_gpus(rep)
    out.append("Per benchmark shape: predicted = sum over launches of max(DRAM bytes / bandwidth, issued "
               "instructions / issue rate) + launches x overhead; measured = committed GPU result")
    hdr = f"{'op':<16} {'shape':<22} {'mode':<16} {'dt':<4} {'L':>2} {'DRAM MB':>8} {'Ginstr':>7} |"
    for gpu in gpus:
        hdr += f" {gpu + ' pred':>10} {'bound':<7} {'floor':>7}"
        hdr += f" {'measured':>9} {'meas/pred':>9} |" if gpu in seen else " |"
    out.append(hdr)
    for s in rep["shapes"]:
        line = (f"{s['op']:<16} {_shape_str(s):<22} {_mode_str(s):<16} {SHORT_DTYPE[s['dtype']]:<4} {s['launches']:>2} "
                f"{s['dram_bytes'] / 1e6:>8.1f} {s['issued'] / 1e9:>7.2f} |")
        for gpu in gpus:
            p, m = s["predicted"][gpu], s["measured"].get(gpu)
            line += f" {p['us']:>10.1f} {p['bound']:<7} {s['floor_us'][gpu]:>7.1f}"
            if gpu in seen:
                line += (f" {(format(m['us'], '.1f') + ('g' if m['launch'] == 'graph' else 'e')) if m else '-':>9} "
                         f"{format(m['over_predicted'], '.2f') if m else '-':>9}")
            line += " |"
        out.append(line)
    out.append("(times in us; measured: g = CUDA-graph replay, e = eager launch; L = launches)")
    notes = rep["notes"] + sorted({n for s in rep["shapes"] for n in s["notes"]})
    srcs = sorted({s["work_model"] for s in rep["shapes"]})
    out.append("work model: " + "; ".join(srcs))
    for n in notes:
        out.append("note: " + n)
    out.append("")
    if rep["shortfalls"]:
        worst = max((lp["per_logit"] for r in rep["variants"] for lp in r["loops"]), default=float("nan"))
        bars = sum(lp["BAR"] for r in rep["variants"] for lp in r["loops"])
        out.append(f"FAIL: {len(rep['shortfalls'])} shortfalls (worst hot loop {worst:.2f} instr/logit, "
                   f"{bars} block barriers in hot loops):")
        out.extend("  " + b for b in rep["shortfalls"])
    else:
        out.append(f"OK: {len(rep['variants'])} streaming variants within {rep['max_instr_per_logit']:g} "
                   "instr/logit, no barrier in a hot loop, no spill")
    return "\n".join(out) + "\n"


def _measured_gpus(rep):
    return {g for s in rep["shapes"] for g in s["measured"]}


def format_markdown(rep: dict) -> str:
    gpus, seen = list(rep["gpus"]), _measured_gpus(rep)
    t = rep["tools"]
    out = [f"Predicted vs measured, bf16 unless noted (SASS for {t['target']} from Triton {t['triton']}; "
           + ", ".join(f"{k}: {v['dram_bytes_per_s'] / 1e12:g} TB/s, {v['issue_per_s']:.3g} instr/s"
                       for k, v in rep["gpus"].items())
           + f", {rep['launch_overhead_us']:g} µs per launch):", ""]
    head = "| op | shape | mode | launches |"
    rule = "|---|---|---|---:|"
    for g in gpus:
        head += f" {g} predicted µs (bound) | {g} floor µs |"
        rule += "---:|---:|"
        if g in seen:
            head += f" {g} measured µs | measured / predicted |"
            rule += "---:|---:|"
    out += [head, rule]
    for s in rep["shapes"]:
        dt = "" if s["dtype"] == "bfloat16" else f" {SHORT_DTYPE[s['dtype']]}"
        line = f"| {s['op']} | {_shape_str(s)}{dt} | {_mode_str(s)} | {s['launches']} |"
        for g in gpus:
            p, m = s["predicted"][g], s["measured"].get(g)
            line += f" {p['us']:.1f} ({p['bound']}) | {s['floor_us'][g]:.1f} |"
            if g in seen:
                how = " (graph)" if m and m["launch"] == "graph" else " (eager)"
                line += (f" {format(m['us'], '.1f') + how if m else '—'} |"
                         f" {format(m['over_predicted'], '.2f') if m else '—'} |")
        out.append(line)
    out += ["", f"Hot loops of the streaming kernels (budget ≤ {rep['max_instr_per_logit']:g} SASS instructions "
            "per logit, no block barrier, no spill):", "",
            "| kernel | dtype | constexprs | regs | spills | loop | instr/logit | MUFU/logit | BAR/iter | "
            "SHFL/iter | loads/iter |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rep["variants"]:
        if r["dtype"] != "bf16" or "error" in r:
            continue
        cells = (f"| {r['kernel']} | {r['dtype']} | {_flags(r['constexprs'], r.get('aligned_args'))} | "
                 f"{r['registers']} | {r['spill_stores'] + r['spill_loads']} |")
        for i, lp in enumerate(r["loops"] or [None]):
            if lp is None:
                out.append(cells + " — | no hot loop | | | | |")
                continue
            out.append(cells + f" {i} | {lp['per_logit']:.2f} | "
                       f"{lp['mufu_per_logit']:.2f} | {lp['BAR']} | {lp['SHFL']} | {_loads(lp)} |")
    return "\n".join(out) + "\n"


def _json_default(o):
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="compile only the bf16 variants the shape table needs (skips the other variants and dtypes)")
    ap.add_argument("--json", metavar="OUT", help="write every figure as JSON")
    ap.add_argument("--markdown", metavar="OUT", help="write README-ready Markdown tables")
    ap.add_argument("--max-instr", type=float, default=DEFAULT_MAX_INSTR,
                    help="budget of SASS instructions per logit in a streaming loop (default %(default)s)")
    ap.add_argument("--launch-us", type=float, default=LAUNCH_US,
                    help="per-launch overhead in µs (default %(default)s)")
    ap.add_argument("--specialize", choices=("none", "runtime"), default="none",
                    help="none: as tests/compile_kernels.py compiles; runtime: as Triton's launcher specialises "
                         "aligned tensors at the benchmark shapes")
    ap.add_argument("--results", default=str(RESULTS_DIR), help="folder of gpu_*.json benchmark results")
    a = ap.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    for p in (str(ROOT), str(ROOT / "python")):
        if p not in sys.path:
            sys.path.insert(0, p)
    if cuda_tools() is None:
        print("Triton's CUDA tools (ptxas, cuobjdump) are not available: nothing to compile", file=sys.stderr)
        return 2
    rep = Report(quick=a.quick, max_instr=a.max_instr, launch_us=a.launch_us, specialize=a.specialize,
                 results_dir=a.results).run()
    sys.stdout.write(format_text(rep))
    if a.json:
        Path(a.json).write_text(json.dumps(rep, indent=1, default=_json_default) + "\n")
    if a.markdown:
        Path(a.markdown).write_text(format_markdown(rep))
    return 1 if rep["shortfalls"] else 0


if __name__ == "__main__":
    sys.exit(main())
