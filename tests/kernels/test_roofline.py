"""The roofline report (benchmarks/roofline.py): its SASS counting, its model, and the budget.

The counting is tested on handwritten SASS with known counts; the prediction on hand-worked
numbers.  Two tests compile for sm_90 (in a subprocess, with TRITON_INTERPRET unset, like
test_triton_compile.py; skipped without Triton's ptxas):

* a control pair of small kernels written here, one with a block reduction and unaligned 2-byte
  loads inside its loop, one with unmasked 16-byte loads and per-thread accumulators: the report
  must flag the first and pass the second, whatever the project's kernels look like;
* the project's streaming kernels: CI fails on a register spill, a barrier inside a vocabulary
  loop, or a loop above 12 SASS instructions per logit.
"""
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "roofline.py"


rl = load_script("roofline")


def _ptxas_available():
    try:
        return rl.cuda_tools() is not None
    except Exception:
        return False


needs_ptxas = pytest.mark.skipif(not _ptxas_available(),
                                 reason="Triton's CUDA backend (ptxas, cuobjdump) is not available")


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "python"), env.get("PYTHONPATH", "")])
    return env


# --- SASS counting on handwritten SASS ---------------------------------------------------------

# cuobjdump -sass layout: address comment, instruction, encoding comment; some encodings sit on a
# line of their own (they must not count as instructions).
SNIPPET = """
        code for sm_90a
                Function : k
        .headerflags    @"EF_CUDA_TEXMODE_UNIFIED EF_CUDA_64BIT_ADDRESS EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                    /* 0x00000a00ff017b82 */
                                                                             /* 0x000fe40000000800 */
        /*0010*/                   IMAD.MOV.U32 R2, RZ, RZ, RZ ;             /* 0x000000ffff027224 */
        /*0020*/              @!P0 LDG.E.U16 R4, desc[UR4][R2.64] ;          /* 0x0000000402048981 */
        /*0030*/                   LDG.E.128 R8, desc[UR4][R6.64] ;          /* 0x0000000406087981 */
        /*0040*/                   LDG.E.EF.64 R12, desc[UR4][R6.64+0x10] ;  /* 0x00001004060c7981 */
        /*0050*/                   MUFU.EX2 R5, R4 ;                         /* 0x0000000400057308 */
        /*0060*/                   MUFU.EX2 R9, R8 ;                         /* 0x0000000800097308 */
        /*0070*/                   SHFL.BFLY PT, R10, R9, 0x1, 0x1f ;        /* 0x0c201f00090a7f89 */
        /*0080*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;             /* 0x0000000000007b1d */
        /*0090*/                   FADD R3, R3, R5 ;                         /* 0x0000000503037221 */
        /*00a0*/               @P1 BRA 0xc0 ;                                /* 0x0000000000041947 */
        /*00b0*/                   FADD R3, R3, R9 ;                         /* 0x0000000903037221 */
        /*00c0*/                   ISETP.GE.AND P0, PT, R2, UR5, PT ;        /* 0x0000000502007c0c */
        /*00d0*/              @!P0 BRA 0x20 ;                                /* 0xfffffffc00d08947 */
        /*00e0*/                   LDG.E R20, desc[UR4][R2.64] ;             /* 0x0000000402147981 */
        /*00f0*/                   LDG.E R21, desc[UR4][R2.64+0x4] ;         /* 0x0000040402157981 */
        /*0100*/               @P2 BRA 0xe0 ;                                /* 0xfffffffc00f42947 */
        /*0110*/                   EXIT ;                                    /* 0x000000000000794d */
        /*0120*/                   BRA 0x120;                                /* 0xfffffffc00fc7947 */
"""


def test_hot_loop_counts_on_handwritten_sass():
    loops = rl.hot_loops(SNIPPET, elem_bytes=2)
    # the second loop holds only 32-bit loads: fp32 partials, not 16-bit logits; the self-branch
    # at 0x120 is the end-of-kernel trap, not a loop
    assert len(loops) == 1
    lp = loops[0]
    assert (lp["start"], lp["end"]) == (0x20, 0xD0)
    assert lp["instrs"] == 12  # 0x20 .. 0xd0 inclusive
    # U16 (2 B) + 128 (16 B) + EF.64 (8 B): the EF cache hint does not change the width
    assert lp["logits"] == 13  # 26 bytes / 2 bytes per logit
    assert lp["per_logit"] == pytest.approx(12 / 13)
    assert (lp["MUFU"], lp["BAR"], lp["SHFL"], lp["LDG"], lp["branches"]) == (2, 1, 1, 3, 2)
    assert lp["mufu_per_logit"] == pytest.approx(2 / 13)
    assert lp["loads"] == {"LDG.E.U16": 1, "LDG.E.128": 1, "LDG.E.EF.64": 1}
    assert lp["contains"] == 0


def test_hot_loops_for_fp32_logits():
    loops = rl.hot_loops(SNIPPET, elem_bytes=4)
    assert [(lp["start"], lp["end"]) for lp in loops] == [(0x20, 0xD0), (0xE0, 0x100)]
    assert loops[0]["logits"] == 6.5 and loops[0]["per_logit"] == pytest.approx(12 / 6.5)
    assert loops[1]["instrs"] == 3 and loops[1]["logits"] == 2 and loops[1]["per_logit"] == 1.5


def test_nested_loops_are_marked():
    outer_close = "        /*00d8*/              @!P3 BRA 0x10 ;   /* 0x0 */\n"
    sass = SNIPPET.replace("        /*00e0*/", outer_close + "        /*00e0*/")
    loops = rl.hot_loops(sass, elem_bytes=2)
    assert [(lp["start"], lp["end"], lp["contains"]) for lp in loops] == [(0x20, 0xD0, 0), (0x10, 0xD8, 1)]


def test_load_widths():
    assert rl.global_load_bytes("LDG.E.U16") == 2
    assert rl.global_load_bytes("LDG.E") == 4
    assert rl.global_load_bytes("LDG.E.64") == 8
    assert rl.global_load_bytes("LDG.E.128.CONSTANT") == 16
    assert rl.global_load_bytes("LDG.E.U16.STRONG.GPU") == 2
    assert rl.global_load_bytes("LDGSTS.E.128") is None and rl.global_load_bytes("STG.E.128") is None
    assert rl.opcode("@!UP0 LDG.E.U16 R1, desc[UR4][R2.64]") == "LDG.E.U16"


PTXAS_OK = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_tile_stats_kernel' for 'sm_90a'
ptxas info    : Function properties for _tile_stats_kernel
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 75 registers, used 1 barriers
"""


def test_ptxas_log_parsing():
    assert rl.parse_ptxas(PTXAS_OK) == {"registers": 75, "spill_stores": 0, "spill_loads": 0, "stack_bytes": 0}
    spilled = PTXAS_OK.replace("0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads",
                               "48 bytes stack frame, 44 bytes spill stores, 40 bytes spill loads").replace("75", "255")
    assert rl.parse_ptxas(spilled) == {"registers": 255, "spill_stores": 44, "spill_loads": 40, "stack_bytes": 48}


def test_programs_per_sm():
    assert rl.programs_per_sm(75, 8) == 3   # 80 registers x 256 threads: 3 blocks of 64K
    assert rl.programs_per_sm(32, 4) == 16  # 64 warps / 4
    assert rl.programs_per_sm(32, 1, shared_bytes=100 * 1024) == 2  # shared memory bound
    assert rl.programs_per_sm(None, 8) is None


# --- the model ----------------------------------------------------------------------------------

def _sass_loop(start, per_logit, contains=0):
    return {"start": start, "per_logit": per_logit, "contains": contains}


def test_issued_instructions_match_loops_in_order():
    n, note = rl.issued_instructions([{"elements": 100}, {"elements": 10}],
                                     [_sass_loop(0x300, 2.0), _sass_loop(0x100, 30.0)])
    assert n == 30.0 * 100 + 2.0 * 10 and note is None  # matched by address, not by list order


def test_issued_instructions_fall_back_to_the_worst_loop():
    n, note = rl.issued_instructions([{"elements": 100}], [_sass_loop(0x100, 5.0), _sass_loop(0x400, 9.0)])
    assert n == 9.0 * 100 and "worst loop" in note
    # an outer loop around the inner one is not matched, but it can be the worst
    n, note = rl.issued_instructions([{"elements": 100}], [_sass_loop(0x100, 5.0), _sass_loop(0x80, 6.0, 1)])
    assert n == 5.0 * 100 and note is None
    assert rl.issued_instructions([], None) == (0.0, None)
    n, note = rl.issued_instructions([{"elements": 1}], [])
    assert n is None and "not modelled" in note


def test_prediction_arithmetic():
    gpu = {"dram_bytes_per_s": 2e12, "issue_per_s": 10e12}
    entries = [{"dram_bytes": 4_000_000}, {"dram_bytes": 1_000_000}, {"dram_bytes": 0}]
    # launch 1: 2 us of memory vs 1 us of issue; launch 2: 0.5 us vs 3 us; launch 3: nothing measured
    p = rl.predict(entries, [10e6, 30e6, None], gpu, launch_us=0.5)
    assert p["mem_us"] == pytest.approx(2.5) and p["issue_us"] == pytest.approx(4.0)
    assert p["launch_us"] == pytest.approx(1.5)
    assert p["us"] == pytest.approx(2.0 + 3.0 + 0.0 + 1.5)
    assert p["bound"] == "issue"
    assert rl.predict(entries[:1], [0.0], gpu, launch_us=5.0)["bound"] == "launch"


def _row(**kw):
    row = {"kernel": "k", "dtype": "bf16", "constexprs": {"BLOCK": 1024}, "spill_stores": 0, "spill_loads": 0,
           "loops": [{"per_logit": 8.0, "BAR": 0}]}
    row.update(kw)
    return row


def test_budget_checks():
    checker = types.SimpleNamespace(streaming={"k"}, max_instr=12.0)
    assert rl.Report.shortfalls(checker, [_row(), _row(kernel="merge", spill_stores=8)]) == []
    bad = rl.Report.shortfalls(checker, [
        _row(loops=[{"per_logit": 12.5, "BAR": 0}]),
        _row(loops=[{"per_logit": 4.0, "BAR": 2}]),
        _row(spill_loads=4),
        _row(loops=[]),
        _row(error="PTXASError: boom"),
    ])
    assert len(bad) == 5
    assert "12.50 SASS instr/logit > 12" in bad[0]
    assert "2 block barriers" in bad[1]
    assert "spills registers" in bad[2]
    assert "no hot loop" in bad[3]
    assert "does not compile" in bad[4]


def test_measured_times_prefer_graph_replay(tmp_path):
    def rec(launch, median):
        return {"extra_info": {"device": "NVIDIA H100 80GB HBM3", "op": "verify", "provider": "triton",
                               "launch": launch, "mode": "tokens", "B": 1, "K": 4, "V": 151936,
                               "dtype": "bfloat16"}, "stats": {"median": median}}
    (tmp_path / "gpu_h100.json").write_text(json.dumps({"benchmarks": [rec("graph", 30e-6), rec("eager", 1e-3)]}))
    (tmp_path / "cpu_x.json").write_text("{}")
    m = rl.measured_times(tmp_path)
    key = rl._record_key("verify", {"B": 1, "K": 4, "V": 151936}, "tokens", "bfloat16")
    assert list(m) == [key] and list(m[key]) == ["H100"]
    assert m[key]["H100"]["launch"] == "graph" and m[key]["H100"]["us"] == pytest.approx(30.0)


def test_committed_gpu_results_are_found():
    m = rl.measured_times()
    if not m:
        pytest.skip("no committed GPU results under benchmarks/results")
    shapes = rl.bench_shapes()
    found = [s for s in shapes if rl._record_key(s["op"], s["shape"], s["mode"], s["dtype"]) in m]
    assert found, "none of the benchmark shapes matches a committed GPU record"


def test_every_benchmark_shape_has_a_valid_work_model():
    shapes = rl.bench_shapes()
    assert {s["op"] for s in shapes} == {"verify", "token_divergence"}
    for s in shapes:
        entries, _ = rl.shape_work(s, 132)  # raises on a malformed work model
        streamed = sum(lp["elements"] for e in entries for lp in e["loops"])
        # every logit of both inputs is streamed at least once
        n_logits = (s["shape"]["B"] * (2 * s["shape"]["K"] + 1) if s["op"] == "verify" else 2 * s["shape"]["N"])
        assert streamed >= n_logits * s["shape"]["V"], s
        assert sum(e["dram_bytes"] for e in entries) >= s["floor_bytes"] * 0.99, s


# --- compiled for sm_90 ------------------------------------------------------------------------

CONTROLS = '''
import triton
import triton.language as tl


@triton.jit
def slow_loop(x_ptr, y_ptr, out_ptr, V, BLOCK: tl.constexpr):
    # a block-wide max and sum inside the loop; masked loads at a runtime bound: 2-byte loads
    r = tl.program_id(0).to(tl.int64)
    lane = tl.arange(0, BLOCK)
    acc = tl.zeros((), tl.float32)
    for s in range(0, V, BLOCK):
        c = s + lane
        a = tl.load(x_ptr + r * V + c, mask=c < V, other=0.0).to(tl.float32)
        b = tl.load(y_ptr + r * V + c, mask=c < V, other=0.0).to(tl.float32)
        acc += tl.sum(tl.exp(a - tl.max(b, 0)), 0)
    tl.store(out_ptr + r, acc)


@triton.jit
def lean_loop(x_ptr, y_ptr, out_ptr, V, BLOCK: tl.constexpr):
    # per-thread accumulators, one exp2 per pair, unmasked aligned loads: 16-byte loads
    r = tl.program_id(0).to(tl.int64)
    lane = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    for s in range(0, V, BLOCK):
        c = s + lane
        a = tl.load(tl.multiple_of(x_ptr + r * V + c, 16)).to(tl.float32)
        b = tl.load(tl.multiple_of(y_ptr + r * V + c, 16)).to(tl.float32)
        acc += tl.exp2(a - b)
    tl.store(out_ptr + r, tl.sum(acc, 0))
'''

CONTROL_DRIVER = '''
import json, sys, types
sys.path.insert(0, sys.argv[1])
import importlib.util
spec = importlib.util.spec_from_file_location("rl", sys.argv[2])
rl = importlib.util.module_from_spec(spec); spec.loader.exec_module(rl)
comp = rl.Compiler(rl.load_compile_kernels())
sig = {"x_ptr": "*bf16", "y_ptr": "*bf16", "out_ptr": "*fp32", "V": "i32"}
rows = []
for name in ("slow_loop", "lean_loop"):
    c = comp.compile("roofline_controls", name, sig, {"BLOCK": 2048}, 8)
    rows.append(dict(kernel=name, dtype="bf16", constexprs={"BLOCK": 2048}, **c["ptxas"],
                     loops=rl.hot_loops(c["sass"], 2)))
bad = rl.Report.shortfalls(types.SimpleNamespace(streaming={"slow_loop", "lean_loop"}, max_instr=12.0), rows)
print(json.dumps({"rows": rows, "shortfalls": bad}))
'''


@needs_ptxas
def test_compiled_controls_one_flagged_one_clean(tmp_path):
    (tmp_path / "roofline_controls.py").write_text(textwrap.dedent(CONTROLS))
    res = subprocess.run([sys.executable, "-c", CONTROL_DRIVER, str(tmp_path), str(SCRIPT)], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    slow, lean = out["rows"]
    assert len(slow["loops"]) == 1 and len(lean["loops"]) == 1
    assert slow["loops"][0]["BAR"] > 0 and set(slow["loops"][0]["loads"]) == {"LDG.E.U16"}
    assert lean["loops"][0]["BAR"] == 0 and set(lean["loops"][0]["loads"]) == {"LDG.E.128"}
    assert lean["loops"][0]["per_logit"] <= 12.0
    assert lean["loops"][0]["mufu_per_logit"] == pytest.approx(0.5)  # one exp2 per (target, draft) pair
    assert out["shortfalls"] and all(s.startswith("slow_loop") for s in out["shortfalls"])


@needs_ptxas
def test_streaming_kernels_within_budget(tmp_path):
    """CI's gate: every streaming kernel variant at most 12 SASS instructions per logit in each
    vocabulary loop, no block barrier inside one, no register spill."""
    out = tmp_path / "roofline.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out), "--markdown", str(tmp_path / "r.md")],
                         env=_env(), capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode in (0, 1), res.stdout[-3000:] + res.stderr[-5000:]
    rep = json.loads(out.read_text())
    # the report looked at every streaming kernel, and found what it must measure
    assert {r["kernel"] for r in rep["variants"]} >= set(rep["streaming_kernels"])
    assert all(r.get("registers") for r in rep["variants"] if "error" not in r)
    assert rep["shapes"] and all(s["predicted"]["H100"]["us"] > 0 for s in rep["shapes"])
    shortfalls = rep["shortfalls"]
    rc = res.returncode
    assert rc == 0, f"{len(shortfalls)} roofline shortfalls, e.g.:\n  " + "\n  ".join(shortfalls[:30])
