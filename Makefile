# Developer and CI entry points. CI runs `.ci/run`, which is `bash lab/install-deps.sh` + `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint lab-deps kernel lab-pytest

DEMO_OUT ?= /tmp/warpdrive-demo-README.md.gz

# The main job on a fresh machine: install, then compress on the bundled ZIP device model
# (no hardware needed), check the result with gzip(1), and compress a directory as jobs in flight.
demo: $(STAMP)
	$(VENV)/bin/warpdrive compress README.md -o $(DEMO_OUT) -f
	gzip -dc $(DEMO_OUT) | cmp - README.md && echo "demo: gzip -d of our output matches README.md"
	$(PY) examples/compress_files.py warpdrive

# Host tests run here; `lab`-marked tests run inside one QEMU guest boot (lab/pytest_lab.py).
# lab-deps is a quick no-op once the lab's packages, QEMU root and sources are there (else root).
test: lab-deps $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Reinstall when the package metadata changes; otherwise the venv is reused as is.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# lint-imports checks the layer contracts in .importlinter (tests/test_layers.py runs it in make test).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy warpdrive
	$(VENV)/bin/lint-imports --no-logo

lab-deps:
	bash lab/install-deps.sh

kernel: $(STAMP)
	$(PY) lab/kernel.py

lab-pytest: $(STAMP)
	$(PY) lab/run.py --pytest $(PYTEST_ARGS)
