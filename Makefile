# otel-kepler: `make run` starts the agent on this machine, `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/local.yaml
CONSTRAINTS := requirements/constraints.txt
# pip without its chatter (progress, notices about the local pip configuration, setuptools'
# editable-install notice); errors still show.
PIP := $(PY) -m pip --quiet --quiet --disable-pip-version-check --no-input

.PHONY: run test test-deps lint typecheck bench bench-deps accuracy gpu-check image wheel-check constraints clean

# The agent and its runtime dependencies, nothing else (about 230 MB): all `make run` needs.
# Editable, so edits to the sources take effect without reinstalling; --no-compile, so Python
# compiles only the modules the agent imports (not the whole Kubernetes client) on first use.
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	@echo "Setting up $(VENV) with otel-kepler and its runtime dependencies (once, under a minute)"
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) install --no-compile --constraint $(CONSTRAINTS) --editable .
	@touch $@

# The test toolchain on top (pytest, ruff, mypy, scikit-learn, the peers' client libraries).
$(VENV)/.test-installed: $(VENV)/.installed
	@echo "Adding the test toolchain to $(VENV)"
	@$(PIP) install --constraint $(CONSTRAINTS) --editable '.[test]'
	@touch $@

run: $(VENV)/.installed
	@echo "Starting otel-kepler with $(CONFIG) (Ctrl-C stops it)"
	@$(VENV)/bin/otel-kepler run --config $(CONFIG)

# System packages and peer binaries the tests start (needs root; quick when present).
# The eBPF receiver's kernel side: python3-bpfcc, bpfcc-tools, bpftool, linux-headers-amd64,
# tracefs/debugfs mounts and /lib/modules links (root; quick when done).
test-deps:
	@if [ "$$(id -u)" = 0 ]; then bash scripts/install-test-deps.sh && bash scripts/setup-ebpf.sh; \
	else echo "not root: skipping system test dependencies (tests that need them will skip)"; fi

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy --strict over every package as installed: otel_kepler with receivers/, processors/ and
# exporters/ under it (scripts/typecheck.py lays the tree out as pyproject.toml maps it).
typecheck: $(VENV)/.test-installed
	$(PY) scripts/typecheck.py

test: $(VENV)/.test-installed test-deps lint typecheck
	$(VENV)/bin/pytest -q

# What the whole-agent benchmark runs beside the agent: Debian's prometheus-node-exporter
# (unpacked into .cache/peers, no service started) and py-spy for its profile.
bench-deps: $(VENV)/.installed
	bash bench/install-bench-deps.sh

# The whole agent first (bench_agent.py: about 20 minutes, BENCH_QUICK=1 about 5; root adds the
# eBPF mode), then each part on its own.
bench: $(VENV)/.test-installed bench-deps
	$(PY) bench/bench_agent.py
	$(PY) bench/bench_tick.py
	$(PY) bench/bench_procfs.py
	$(PY) bench/bench_nvml.py
	$(PY) bench/bench_hwmon.py
	$(PY) bench/bench_k8s.py
	$(PY) bench/bench_models.py
	@if [ "$$(id -u)" = 0 ]; then $(PY) bench/bench_ebpf.py; else echo "bench_ebpf needs root"; fi

# Error against a known truth per scenario (fixture meters driven by real burner processes):
# the table in docs/accuracy.md. About a minute.
accuracy: $(VENV)/.test-installed
	$(PY) scripts/accuracy.py

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

# Re-pin $(CONSTRAINTS) to the runtime dependencies as they resolve today (Python $(PYTHON)).
constraints:
	bash scripts/pin-constraints.sh

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache *.egg-info
