# otel-kepler: `make run` starts the agent on this machine, `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/local.yaml

.PHONY: run test test-deps lint typecheck bench gpu-check image wheel-check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/otel-kepler run --config $(CONFIG)

# System packages and peer binaries the tests start (needs root; quick when present).
# The eBPF receiver's kernel side: python3-bpfcc, bpfcc-tools, bpftool, linux-headers-amd64,
# tracefs/debugfs mounts and /lib/modules links (root; quick when done).
test-deps:
	@if [ "$$(id -u)" = 0 ]; then bash scripts/install-test-deps.sh && bash scripts/setup-ebpf.sh; \
	else echo "not root: skipping system test dependencies (tests that need them will skip)"; fi

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy otel_kepler

test: $(VENV)/.installed test-deps lint typecheck
	$(VENV)/bin/pytest -q

bench: $(VENV)/.installed
	$(PY) bench/bench_tick.py
	$(PY) bench/bench_procfs.py
	$(PY) bench/bench_nvml.py
	$(PY) bench/bench_hwmon.py
	$(PY) bench/bench_k8s.py
	$(PY) bench/bench_models.py
	@if [ "$$(id -u)" = 0 ]; then $(PY) bench/bench_ebpf.py; else echo "bench_ebpf needs root"; fi

# On a machine with an NVIDIA GPU (and PyTorch for the load): GPU energy attributed to a
# load's PID against the NVML energy counter's delta minus idle.
gpu-check: $(VENV)/.installed
	$(PY) scripts/gpu_check.py

# The agent image (needs a Docker engine).
image:
	docker build -t otel-kepler:0.1.0 .

# Build the wheel and prove it installs and starts in a clean virtual environment.
wheel-check:
	bash scripts/check-wheel.sh

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache *.egg-info
