# `make test` sets up a virtual environment (once) and runs the offline CPU test suite; .ci/run calls it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test lint docs

setup: $(VENV)/.installed

# torch first, pinned: an unpinned torch (or one pulled in by another package) can be a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# The reference docs, built strictly: a broken link or a page missing from mkdocs.yml's nav fails the build.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

# The browser tests on their own (a page's timing suffers on a busy machine), then the rest with one test process per
# core (pytest-xdist), a test file's tests together in one of them (module fixtures built once).
test: lint docs
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n auto --dist loadfile -m "not slow and not browser"
