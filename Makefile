# On a fresh machine two commands are all anyone needs:  `make audit`  and  `make test`.
# Both install the missing system packages (scripts/system-deps.sh: the default corpus,
# a compiler), build .venv (torch CPU build, triton, test tools, transformers, then the
# package with its C++ extension).  Edits to setup.py, requirements*.txt or csrc/ rebuild.
#
#   make audit      the main job: `specfair audit` on the shipped pair and corpus -> specfair-audit/
#   make demo       the kernel demo (python -m specfair_kernels.demo)
#   make test       unit tests, then every benchmark once as a smoke test
#   make bench      CPU benchmarks for real (2 threads) -> benchmarks/results/cpu_<cpu>.json
#   make gpu-bench  on a CUDA machine: benchmarks + CUDA test run (benchmarks/run_gpu.sh)
#   make table      Markdown table from every JSON under benchmarks/results/

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BUILD_INPUTS := setup.py scripts/system-deps.sh requirements-cpu.txt requirements-corpus.txt requirements-models.txt $(wildcard pyproject.toml setup.cfg) \
                $(wildcard csrc/*.cpp csrc/*.h csrc/*.hpp csrc/*.cu csrc/*.cuh)

# Short CPU model name for the results file, e.g. "amd-epyc" (evaluated only when used).
CPU_SLUG = $(shell sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -1 \
             | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/^-//; s/-$$//')
BENCH_JSON ?= benchmarks/results/cpu_$(or $(CPU_SLUG),unknown).json

.NOTPARALLEL:
.PHONY: install audit demo test unit-test bench-smoke bench gpu-bench table clean distclean

install: $(STAMP)

$(STAMP): $(BUILD_INPUTS)
	bash scripts/system-deps.sh
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found" >&2; exit 1; }
	$(PY) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --upgrade pip || echo "warning: pip was not upgraded; going on with $$($(PY) -m pip --version)" >&2
	$(PY) -m pip install -r requirements-cpu.txt -r requirements-corpus.txt -r requirements-models.txt
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	$(PY) -c "import specfair_kernels as sk; print('specfair_kernels backends on cpu:', sk.available_backends())"
	touch $@

audit: $(STAMP)
	$(VENV)/bin/specfair audit --out specfair-audit

demo: $(STAMP)
	$(PY) -m specfair_kernels.demo

test: unit-test bench-smoke

# pytest exits 5 when it collected nothing: that is a failure here, never a pass.
unit-test: $(STAMP)
	@rc=0; TRITON_INTERPRET=1 $(PY) -m pytest tests -q || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests under tests/" >&2; fi; \
	exit $$rc

# Every benchmark body runs exactly once (no timing); unavailable providers skip.
bench-smoke: $(STAMP)
	@rc=0; TRITON_INTERPRET=1 $(PY) -m pytest benchmarks --benchmark-disable -q -rs || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no benchmarks under benchmarks/" >&2; fi; \
	exit $$rc

bench: $(STAMP)
	mkdir -p $(dir $(BENCH_JSON))
	OMP_NUM_THREADS=2 $(PY) -m pytest benchmarks -m "not smoke" -q -rs \
	    --benchmark-min-rounds=10 --benchmark-max-time=1.0 --benchmark-json=$(BENCH_JSON)
	$(PY) benchmarks/make_table.py $(BENCH_JSON)

# Runs on the GPU machine with its own python3 (torch + triton already there, no network).
gpu-bench:
	bash benchmarks/run_gpu.sh

table:
	$(or $(wildcard $(PY)),$(PYTHON)) benchmarks/make_table.py benchmarks/results/*.json

clean:
	rm -rf build *.egg-info specfair_kernels/_C*.so .pytest_cache .benchmarks

distclean: clean
	rm -rf $(VENV)
