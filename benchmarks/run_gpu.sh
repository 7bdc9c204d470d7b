#!/usr/bin/env bash
# The one command for the GPU machine (its python3 already has torch, triton and
# pytest-benchmark; it has no network), run from anywhere in the repository:
#
#   bash benchmarks/run_gpu.sh          # CUDA kernel tests, tuning sweeps, benchmarks, roofline
#   bash benchmarks/run_gpu.sh bench    # tuning sweeps, benchmarks and roofline only
#   bash benchmarks/run_gpu.sh test     # the whole test suite on CUDA
#
# Writes into $OUT (default benchmarks/results):
#   gpu_bench.json  pytest-benchmark records (commit as benchmarks/results/gpu_<device>.json)
#   gpu_bench.md    the Markdown table made from them (benchmarks/make_table.py)
#   roofline.md/.json  predicted time beside the measured one, per shape (benchmarks/roofline.py)
#   tune_verify.json, tune_divergence*.json  per-kernel times and launch-configuration sweeps
#   gpu_generate.json  end-to-end generation (benchmarks/gpu_generate.py: batch 1, batch 32, cuda_graph,
#                      the whole step captured: fixed_step with cuda_graph)
#   *.log           each step's output
# Exits non-zero if the install, the benchmarks or the tests failed.
set -uo pipefail
cd "$(dirname "$0")/.."

WHAT=${1:-all}
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
unset TRITON_INTERPRET            # real kernels on the GPU, never the interpreter
export PYTHONUNBUFFERED=1
start=$(date +%s)
stamp() { echo "[run_gpu $(( $(date +%s) - start )) s] $*"; }

"$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except Exception as exc:
    print("triton unavailable:", exc)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {torch.cuda.get_device_name(0)} ({p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB)")
else:
    print("device: NO CUDA DEVICE - the benchmarks would measure the CPU")
EOF

stamp "installing the package (editable, no deps, no network)"
if ! "$PY" -m pip install --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1; then
    tail -40 "$OUT/install.log"
    stamp "install FAILED"
    exit 1
fi
"$PY" -c "import specfair_kernels as sk, torch; d = 'cuda' if torch.cuda.is_available() else 'cpu'; print(f'backends on {d}:', sk.available_backends(d))"

bench_rc=0
test_rc=0
if [[ $WHAT == all ]]; then
    # The kernels first: equality with the reference at real vocabularies, CUDA-graph capture.
    stamp "CUDA kernel tests"
    "$PY" -m pytest tests/kernels/test_triton_cuda.py tests/kernels/test_divergence_cuda.py \
        tests/kernels/test_verify_triton.py tests/kernels/test_verify_race.py tests/kernels/test_verify_block.py \
        tests/specfair/test_fastpath.py tests/specfair/test_step_graph.py \
        -x -q -p no:cacheprovider \
        2>&1 | tee "$OUT/tests_kernels_gpu.log"
    test_rc=${PIPESTATUS[0]}
    stamp "kernel tests done (exit $test_rc)"
fi
if [[ $WHAT == all || $WHAT == bench ]]; then
    stamp "tuning sweeps"
    OUT=$OUT "$PY" benchmarks/tune_verify.py --quick 2>&1 | tee "$OUT/tune_verify.log"
    OUT=$OUT "$PY" benchmarks/tune_divergence.py 2>&1 | tee "$OUT/tune_divergence.log"
    OUT=$OUT "$PY" benchmarks/tune_divergence.py evict_first 2>&1 | tee -a "$OUT/tune_divergence.log"
    stamp "benchmarks"
    "$PY" -m pytest benchmarks -q -rs -p no:cacheprovider \
        --benchmark-min-rounds=20 --benchmark-max-time=0.2 \
        --benchmark-json="$OUT/gpu_bench.json" 2>&1 | tee "$OUT/gpu_bench.log"
    bench_rc=${PIPESTATUS[0]}
    if [[ -s $OUT/gpu_bench.json ]]; then
        "$PY" benchmarks/make_table.py "$OUT/gpu_bench.json" -o "$OUT/gpu_bench.md" && cat "$OUT/gpu_bench.md"
        stamp "roofline beside the measured times"
        "$PY" benchmarks/roofline.py --quick --results "$OUT" --json "$OUT/roofline.json" \
            --markdown "$OUT/roofline.md" 2>&1 | tail -30
    fi
    stamp "benchmarks done (exit $bench_rc)"
    stamp "end-to-end generation: batch 1 vs HF assisted, batch 32 vs the verifier alone, cuda_graph=True"
    "$PY" benchmarks/gpu_generate.py --out "$OUT" --only correctness,batch1,batch32,cuda_graph \
        2>&1 | tee "$OUT/gpu_generate.log"
    gen_rc=${PIPESTATUS[0]}
    [[ $gen_rc -eq 0 ]] || bench_rc=$gen_rc
    stamp "generation done (exit $gen_rc)"
fi
if [[ $WHAT == test ]]; then
    stamp "test suite on CUDA"
    "$PY" -m pytest tests -x -q -p no:cacheprovider 2>&1 | tee "$OUT/tests_gpu.log"
    test_rc=${PIPESTATUS[0]}
    stamp "tests done (exit $test_rc)"
fi

"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
stamp "finished: benchmarks exit $bench_rc, tests exit $test_rc"
[[ $bench_rc -eq 0 && $test_rc -eq 0 ]]
