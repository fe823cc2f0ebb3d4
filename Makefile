# asr-optimize: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# On CPU machines, pin the CPU build of torch (a plain `torch` pulls a multi-GB CUDA build).
TORCH_SPEC ?= torch==2.13.0
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export HF_HUB_DISABLE_TELEMETRY ?= 1

.PHONY: venv install demo test test-fast lint bench-gpu clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)" || $(PIP) install -q "torch>=2.4,<3"
	$(PIP) install -q -e ".[dev,triton]"
	$(PIP) install -q --no-deps nvidia-pytriton==0.7.0
	touch $@

venv install: $(VENV)/.installed

## demo: install, then run the whole flow on the bundled demo model (CPU, local Prefect, ./model_store)
demo: $(VENV)/.installed
	$(VENV)/bin/asr-optimize run --device cpu

## test: install, then run the test suite (fast + integration tests against real servers)
test: $(VENV)/.installed
	$(PY) -m pytest -q

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
