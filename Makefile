# asr-optimize: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# On CPU machines, pin the CPU build of torch (a plain `torch` pulls a multi-GB CUDA build).
TORCH_SPEC ?= torch==2.13.0
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export HF_HUB_DISABLE_TELEMETRY ?= 1

.PHONY: venv install demo test test-fast lint bench-gpu perf-analyzer clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)" || $(PIP) install -q "torch>=2.4,<3"
	$(PIP) install -q -e ".[dev,triton]"
	$(PIP) install -q --no-deps nvidia-pytriton==0.7.0
	touch $@

venv install: $(VENV)/.installed

# Triton's load generator, perf_analyzer 2.51 (the bundled tritonserver's release), out of the tritonclient 2.51.0
# wheel; the venv keeps its newer tritonclient. It needs libcudart.so.12 (nvidia-cuda-runtime-cu12, put on its
# library path by asr_optimize.loadtest.perf_analyzer) and libb64.so.0d (apt package libb64-0d).
PERF_ANALYZER := $(VENV)/bin/perf_analyzer
PERF_ANALYZER_WHEEL ?= tritonclient==2.51.0

$(PERF_ANALYZER): | $(VENV)/.installed
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PIP) download -q --no-deps -d "$$tmp" "$(PERF_ANALYZER_WHEEL)" && \
	$(PY) -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
	name = next(n for n in z.namelist() if n.endswith('.data/data/bin/perf_analyzer')); \
	open(sys.argv[2], 'wb').write(z.read(name))" "$$tmp"/tritonclient-*.whl "$@.tmp"
	chmod +x "$@.tmp"
	$(PIP) install -q nvidia-cuda-runtime-cu12
	$(PY) -m asr_optimize.loadtest.perf_analyzer "$@.tmp"
	mv "$@.tmp" "$@"

## perf-analyzer: install Triton's perf_analyzer into the venv (asr-optimize perf-analyzer runs it)
perf-analyzer: $(PERF_ANALYZER)

## demo: install, then run the whole flow on the bundled demo model (CPU, local Prefect, ./model_store)
demo: $(VENV)/.installed
	$(VENV)/bin/asr-optimize run --device cpu

## test: install, then run the test suite (fast + integration tests against real servers)
test: $(VENV)/.installed $(PERF_ANALYZER)
	$(PY) -m pytest -q --durations=20

## test-fast: the unit tests only (tests/unit: no servers, no whole-flow runs)
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

## bench-gpu: the GPU benchmark (run on a CUDA host; see README "GPU benchmark")
bench-gpu: $(VENV)/.installed
	$(VENV)/bin/asr-optimize bench --device cuda

clean:
	rm -rf $(VENV) model_store/artifacts model_store/pointers reports/run-* .pytest_cache
