# The README's commands: `make install` (venv + pinned stack + pvt_mm), `make test`,
# `make demo` (install if needed, then train and evaluate on the built-in dataset).
# `make install-tests`: the test-only packages (requirements/tests.txt) in $(VENV)/test-deps,
# kept off the venv's own sys.path; `make test` installs them when missing or out of date and
# tests/conftest.py puts them on the test process's path.
VENV ?= .venv
export VENV
PY := $(VENV)/bin/python
TEST_DEPS := $(VENV)/test-deps/installed
PYTEST_ARGS ?=

.PHONY: install install-tests test demo

install:
	bash tools/install.sh

$(PY):
	bash tools/install.sh

install-tests: | $(PY)
	bash tools/install.sh --tests

$(TEST_DEPS): requirements/tests.txt requirements/constraints.txt | $(PY)
	bash tools/install.sh --tests

test: $(TEST_DEPS) | $(PY)
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

demo: | $(PY)
	$(PY) tools/demo.py
