# Every target installs what it needs into .venv first.
PY := .venv/bin/python
WORKDIR ?= runs/shapes_caption

.PHONY: install test main quick geometry t2i

# The package alone for the runs (no torch); with the test extras (torch, the independent
# reference the tests compare against) for `make test`.
.venv/installed: setup.py
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

.venv/test-installed: .venv/installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: .venv/installed

test: .venv/test-installed
	$(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder tests

main: install
	$(PY) -m c3_jax.main --config=configs/shapes_caption.py --workdir=$(WORKDIR)

quick: install
	$(PY) -m c3_jax.main --config=configs/shapes_caption.py:quick --workdir=$(WORKDIR)_quick

geometry: install
	$(PY) -m c3_jax.main --config=configs/geometry_synthetic.py --workdir=runs/geometry_synthetic

t2i: install
	$(PY) -m c3_jax.main --config=configs/shapes_t2i.py --workdir=runs/shapes_t2i
