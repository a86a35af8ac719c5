# Every target installs what it needs into .venv first, at the tested versions of
# constraints.txt. --no-compile: Python writes the bytecode of the modules a run imports
# when it first imports them, not of every installed file (a fresh install 30 s faster).
PY := .venv/bin/python
PIP := $(PY) -m pip install -q --no-compile -c constraints.txt
WORKDIR ?= runs/shapes_caption

.PHONY: install test test-fast lint constraints main quick geometry t2i bench-gpu

# The package alone for the runs (no torch); with the test extras (torch, the independent
# reference the tests compare against) for `make test`.
.venv/installed: pyproject.toml setup.py constraints.txt
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PIP) -e .
	touch $@

.venv/test-installed: .venv/installed
	$(PIP) -e '.[test]'
	touch $@

.venv/lint-installed: .venv/installed
	$(PIP) -e '.[lint]'
	touch $@

install: .venv/installed

# The suite on 2 workers, each module's fixtures built once; bytecode written as it imports
# (pip installs without it, see PIP above).
PYTEST := env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder

test: .venv/test-installed
	$(PYTEST) tests

# The unit tests: everything not marked slow.
test-fast: .venv/test-installed
	$(PYTEST) -m "not slow" tests

lint: .venv/lint-installed
	$(PY) -m ruff check c3_jax configs tests benchmarks

# Rewrites constraints.txt from .venv (run after an upgrade that passes `make test`).
constraints: .venv/test-installed
	{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

main: install
	$(PY) -m c3_jax.main --config=configs/shapes_caption.py --workdir=$(WORKDIR)

quick: install
	$(PY) -m c3_jax.main --config=configs/shapes_caption.py:quick --workdir=$(WORKDIR)_quick

geometry: install
	$(PY) -m c3_jax.main --config=configs/geometry_synthetic.py --workdir=runs/geometry_synthetic

t2i: install
	$(PY) -m c3_jax.main --config=configs/shapes_t2i.py --workdir=runs/shapes_t2i

# The GPU benchmarks in one command (refuses with exit 2 where no GPU is visible; installs
# its own .venv-gpu with JAX for CUDA). JSONs in runs/gpu/ ($OUT when set); see BENCHMARKS.md.
bench-gpu:
	benchmarks/gpu.sh
