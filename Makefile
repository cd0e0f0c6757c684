# Two commands on a fresh machine: `make demo` and `make test` (each sets everything up first).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.posevla-installed
export MUJOCO_GL ?= egl

.PHONY: setup demo test test-slow bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install_system_deps.sh
	bash scripts/install_system_deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, exactly pinned: pip then takes the local CPU wheel instead of a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/posevla demo

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) benchmarks/bench_generate.py

clean:
	rm -rf runs .pytest_cache
