# Developer and CI entry points. CI runs `.ci/run`, which is `bash lab/install-deps.sh` + `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint lab-deps kernel lab-pytest

# Host tests run here; `lab`-marked tests run inside one QEMU guest boot (lab/pytest_lab.py).
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Reinstall when the package metadata changes; otherwise the venv is reused as is.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy warpdrive

lab-deps:
	bash lab/install-deps.sh

kernel: $(STAMP)
	$(PY) lab/kernel.py

lab-pytest: $(STAMP)
	$(PY) lab/run.py --pytest $(PYTEST_ARGS)
