# Two commands do all set-up: `make demo` and `make test` (each builds .venv first if needed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned to the CPU wheel that lies on disk; the package metadata itself only asks torch>=2.2.
TORCH  ?= torch==2.13.0
EXTRAS := test,demo,cli
# Exact versions of the dev/test environment (regenerate with `make lock`).
LOCK   := requirements/lock.txt
STAMP  := $(VENV)/.installed
LATEST := .venv-latest

.PHONY: demo test typecheck test-latest lock lint bench docs clean

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet --constraint $(LOCK) "$(TORCH)" -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bilevel demo --output-dir runs

# The type check ([tool.mypy] in pyproject.toml) runs first: a typing error fails `make test`.
test: typecheck
	$(BIN)/python -m pytest -n 2 -q

typecheck: $(STAMP)
	$(BIN)/python -m mypy

# The same suite against the newest release of every dependency (torch stays pinned), in a
# fresh .venv-latest: drift in a dependency shows up here as a named failure first.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet "$(TORCH)"
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager "$(TORCH)" -e ".[$(EXTRAS),docs]"
	@$(LATEST)/bin/python -m pip freeze --exclude-editable | diff $(LOCK) - | grep '^[<>] [^#]' \
		| sed 's/^</  locked:/; s/^>/  latest:/' || echo "  (the newest versions are the locked ones)"
	@$(LATEST)/bin/python -m pytest -n 2 -q || { \
		echo "test-latest: FAILED against the newest dependency versions listed above;" \
		     "'make test' (the lock) is the reference. Fix the code or the test, then 'make lock'."; \
		exit 1; }

# Re-resolve the newest versions, test them, and write them to the lock.
lock: test-latest
	{ sed -n '/^#/p' $(LOCK); $(LATEST)/bin/python -m pip freeze --exclude-editable \
		| sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)

# Documentation site (MkDocs + mkdocstrings) in site/: `mkdocs build --strict` runs every
# tutorial (docs/tutorials/*.py) and fails on any error or warning. One BLAS/OpenMP thread:
# the tutorials' problems are small, where more threads only contend for the cores.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --constraint $(LOCK) "$(TORCH)" -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	OMP_NUM_THREADS=1 NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true \
		$(BIN)/python -m mkdocs build --strict

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/python -m ruff check bilevel tests benchmarks examples

bench: $(STAMP)
	$(BIN)/python benchmarks/implicit_diff.py

clean:
	rm -rf $(VENV) $(LATEST) build site *.egg-info
