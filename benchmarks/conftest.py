"""Shared machinery for the pytest-benchmark suites in this folder.

* Collects ``bench_*.py`` (pytest's default pattern is ``test_*.py``).
* ``bench_ctx`` (session fixture): the device, its name, the memory bandwidth measured
  once per session (the floor every record is compared with), and ``run()``, which warms a
  callable up, times it with GPU synchronisation and fills ``benchmark.extra_info``.

Timing.  On the CPU every round is one call timed with ``time.perf_counter``.  On a GPU
the timer synchronises the device before it reads the clock, and a round is ``iterations``
back-to-back calls (enough for about 1 ms of work), so a round measures completed GPU
work, and a fast CUDA-graph replay is not drowned by the cost of one synchronisation.
Rounds: at least ``--benchmark-min-rounds``, more while they fit in
``--benchmark-max-time`` seconds.  With ``--benchmark-disable`` each body runs once.

Environment:
  SPECFAIR_BENCH_DEVICE            "cuda" or "cpu" (default: cuda when available)
  SPECFAIR_BENCH_COMPILE           1/0: run the torch.compile providers (default 1 on
                                   CUDA, 0 on the CPU, where compiling takes minutes)
  SPECFAIR_BENCH_COMPILE_BUDGET_S  seconds of torch.compile compilation allowed per
                                   session (default 180); later compile cases skip
"""
from __future__ import annotations

import fnmatch
import functools
import gc
import math
import os
import platform
import time

import pytest
import torch

import specfair_kernels as sk

WARMUP_CALLS = 3
GPU_ROUND_S = 1e-3  # target duration of one timed round on a GPU
MAX_ITERATIONS = 100
MAX_ROUNDS = 2000
SK_BACKENDS = ("torch", "cpp", "triton")

_CTX: "BenchContext | None" = None


# --- collection ------------------------------------------------------------------------

def pytest_collect_file(file_path, parent):
    """Collect bench_*.py, unless pytest's own rules already do (explicit path, ini)."""
    if file_path.suffix != ".py" or not fnmatch.fnmatch(file_path.name, "bench_*.py"):
        return None
    if parent.session.isinitpath(file_path):
        return None
    if any(fnmatch.fnmatch(file_path.name, pat) for pat in parent.config.getini("python_files")):
        return None
    return pytest.Module.from_parent(parent, path=file_path)


def pytest_configure(config):
    config.addinivalue_line("markers", "smoke: tiny shape that only checks the benchmark runs")


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    try:
        import triton

        machine_info["triton"] = triton.__version__
    except Exception:  # triton is optional
        machine_info["triton"] = None
    if _CTX is not None:
        machine_info["specfair_device"] = _CTX.device_name
        machine_info["specfair_device_type"] = _CTX.device.type
        if "bandwidth" in _CTX.__dict__:  # only if a benchmark measured it
            machine_info["specfair_bandwidth_GBps"] = _CTX.bandwidth / 1e9
            machine_info["specfair_bandwidth_method"] = _CTX.bandwidth_method


# --- device helpers --------------------------------------------------------------------

def bench_device() -> torch.device:
    return torch.device(os.environ.get("SPECFAIR_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _cuda_synced_perf_counter() -> float:
    """pytest-benchmark timer for GPU work: the clock is read only once the device is idle."""
    torch.cuda.synchronize()
    return time.perf_counter()


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value not in ("0", "false", "no", "off")


class BenchContext:
    def __init__(self, config):
        self.config = config
        self.device = bench_device()
        self.on_gpu = self.device.type == "cuda"
        self.disabled = bool(config.getoption("benchmark_disable", False))
        self.min_rounds = int(config.getoption("benchmark_min_rounds", 5) or 1)
        self.max_time = float(config.getoption("benchmark_max_time", 1.0) or 0.0)
        self.compile_enabled = _env_flag("SPECFAIR_BENCH_COMPILE", self.on_gpu)
        self.compile_budget_s = float(os.environ.get("SPECFAIR_BENCH_COMPILE_BUDGET_S", "180"))
        self.compile_spent_s = 0.0

    # -- what the records carry ---------------------------------------------------------
    @functools.cached_property
    def device_name(self) -> str:
        if self.on_gpu:
            return torch.cuda.get_device_name(self.device)
        return cpu_model_name()

    @functools.cached_property
    def bandwidth(self) -> float:
        """Bytes per second of a large same-device copy, counting bytes read plus written."""
        if self.on_gpu:
            free, _ = torch.cuda.mem_get_info(self.device)
            nbytes = 1 << 30
            if self.disabled or free < 4 * nbytes:
                nbytes = 1 << 26
            src = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
            dst = torch.empty_like(src)
            dst.copy_(src)
            torch.cuda.synchronize()
            times = []
            for _ in range(10):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                dst.copy_(src)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            method = f"device-to-device copy of {nbytes >> 20} MiB, CUDA events, best of 10"
        else:
            nbytes = (1 << 25) if self.disabled else (1 << 28)
            src = torch.ones(nbytes // 4, dtype=torch.float32)
            dst = torch.empty_like(src)
            dst.copy_(src)
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                dst.copy_(src)
                times.append(time.perf_counter() - t0)
            method = (f"memcpy of {nbytes >> 20} MiB fp32 (tensor.copy_, {torch.get_num_threads()} threads), "
                      "best of 5")
        del src, dst
        self.empty_cache()
        self.bandwidth_method = method
        return 2 * nbytes / min(times)

    def base_info(self) -> dict:
        info = {"device": self.device_name, "device_type": self.device.type, "torch": torch.__version__}
        if not self.on_gpu:
            info["threads"] = torch.get_num_threads()
            if hasattr(os, "getloadavg"):  # other processes on the cores distort CPU timings
                info["loadavg_1min"] = round(os.getloadavg()[0], 2)
        return info

    # -- availability -------------------------------------------------------------------
    def require_backend(self, provider: str):
        """Skip unless specfair_kernels' backend `provider` can run on this device."""
        reason = sk.available_backends(self.device).get(provider, f"unknown backend {provider!r}")
        if reason is not None:
            pytest.skip(f"backend {provider!r} unavailable on {self.device.type}: {reason}")

    def require_compile(self):
        if not self.compile_enabled:
            pytest.skip("torch.compile providers are off (set SPECFAIR_BENCH_COMPILE=1)")
        if self.compile_spent_s > self.compile_budget_s:
            pytest.skip(f"torch.compile budget spent ({self.compile_spent_s:.0f} s > "
                        f"SPECFAIR_BENCH_COMPILE_BUDGET_S={self.compile_budget_s:.0f})")

    def call_or_skip(self, benchmark, fn, *, compiling: bool = False):
        """First call of `fn`; ImportError / NotImplementedError mean "not written yet": skip.

        Under --benchmark-disable this is the one call the benchmark makes, done through
        the fixture so pytest-benchmark counts it as used.
        """
        def probe():
            t0 = time.perf_counter()
            try:
                result = fn()
                self.sync()
            except (ImportError, NotImplementedError) as exc:
                pytest.skip(f"not available yet: {type(exc).__name__}: {exc}")
            finally:
                if compiling:
                    self.compile_spent_s += time.perf_counter() - t0
            return result

        if benchmark.disabled:
            benchmark._specfair_used = True
            return benchmark.pedantic(probe, rounds=1)
        return probe()

    # -- timing -------------------------------------------------------------------------
    def sync(self):
        if self.on_gpu:
            torch.cuda.synchronize(self.device)

    def empty_cache(self):
        gc.collect()
        if self.on_gpu:
            torch.cuda.empty_cache()

    def cuda_graph(self, fn, warmup: int = WARMUP_CALLS) -> torch.cuda.CUDAGraph:
        """Capture one call of `fn` (after warm-up on a side stream, as CUDA graphs require)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        torch.cuda.synchronize(self.device)
        return graph

    def peak_memory(self, fn) -> int | None:
        """Bytes allocated by one call of `fn` above what was allocated before it (GPU only)."""
        if not self.on_gpu:
            return None
        self.sync()
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        out = fn()
        self.sync()
        peak = torch.cuda.max_memory_allocated(self.device) - base
        del out
        return int(peak)

    def run(self, benchmark, fn, *, info: dict, bytes_moved: int, warm: bool = False):
        """Time `fn` with `benchmark` and record `info`, bytes, floor and fraction of floor.

        `fn` must already have been called once (``call_or_skip``); ``warm=True`` when it
        has also been warmed up (e.g. by graph capture).  Returns fn's last result.
        """
        benchmark.extra_info.update(self.base_info())
        benchmark.extra_info.update(info)
        benchmark.extra_info["bytes"] = int(bytes_moved)
        if benchmark.disabled:
            # Smoke run: the floor's code path still runs (on a small copy), and a graph
            # replay, not yet run by call_or_skip, runs once.
            benchmark.extra_info["floor_us"] = bytes_moved / self.bandwidth * 1e6
            if not getattr(benchmark, "_specfair_used", False):
                return benchmark.pedantic(fn, rounds=1)
            if warm:
                result = fn()
                self.sync()
                return result
            return None

        bw = self.bandwidth
        floor_s = bytes_moved / bw
        benchmark.extra_info["bandwidth_GBps"] = bw / 1e9
        benchmark.extra_info["bandwidth_method"] = self.bandwidth_method
        benchmark.extra_info["floor_us"] = floor_s * 1e6

        times = []
        for _ in range(1 if warm else WARMUP_CALLS):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        per_call = max(min(times), 1e-7)

        iterations = 1
        if self.on_gpu and hasattr(benchmark, "_timer"):
            # pytest-benchmark's timer is private API; without it each round is one
            # call plus a synchronisation, which overstates sub-10-µs calls.
            benchmark._timer = _cuda_synced_perf_counter
            iterations = max(1, min(MAX_ITERATIONS, math.ceil(GPU_ROUND_S / per_call)))
            target = fn
        elif self.on_gpu:
            def target():
                fn()
                torch.cuda.synchronize()
        else:
            target = fn
        rounds = max(self.min_rounds, min(MAX_ROUNDS, math.ceil(self.max_time / (per_call * iterations))))
        result = benchmark.pedantic(target, rounds=rounds, iterations=iterations, warmup_rounds=1)

        median = benchmark.stats.stats.median
        benchmark.extra_info["median_us"] = median * 1e6
        benchmark.extra_info["fraction_of_floor"] = floor_s / median if median > 0 else None
        benchmark.extra_info["calls_per_round"] = iterations
        return result


@pytest.fixture(scope="session")
def bench_ctx(request) -> BenchContext:
    global _CTX
    _CTX = BenchContext(request.config)
    return _CTX


@pytest.fixture(autouse=True)
def _free_memory_between_benchmarks():
    yield
    if torch.cuda.is_available():  # graphs and big inputs must not pile up in GPU memory
        gc.collect()
        torch.cuda.empty_cache()
