# Two commands on a fresh machine: `make demo` and `make test` (each sets everything up first).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.posevla-installed
export MUJOCO_GL ?= egl

.PHONY: setup demo test test-all test-slow bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install_system_deps.sh
	bash scripts/install_system_deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, exactly pinned: pip then takes the local CPU wheel instead of a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	# metaworld pins mujoco 3.3.0; mujoco 4.x splits into mujoco-core/-studio that share the `mujoco/`
	# folder, so drop them first or pip leaves a mix of 3.3 and 4.x files behind
	$(PY) -m pip uninstall -y -q mujoco-core mujoco-studio 2>/dev/null || true
	$(PY) -m pip install -q -e '.[dev]'
	# openpi's real client for the server tests; --no-deps because it pins numpy<2 (its code runs on numpy 2)
	$(PY) -m pip install -q --no-deps openpi-client==0.1.2
	touch $(STAMP)

demo: setup
	$(VENV)/bin/posevla demo

test: setup
	$(PY) -m pytest -q

# every tier: the default suite plus the `slow` checks (sim and parity run in both)
test-all: setup
	$(PY) -m pytest -q -m "slow or not slow"

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_expert.py

clean:
	rm -rf runs .pytest_cache
