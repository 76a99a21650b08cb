# The README's commands: `make install` (venv + pinned stack + pvt_mm), `make test`,
# `make demo` (install if needed, then train and evaluate on the built-in dataset).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install test demo

install:
	bash tools/install.sh

$(PY):
	bash tools/install.sh

test: | $(PY)
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

demo: | $(PY)
	$(PY) tools/demo.py
