# Two commands do all set-up: `make demo` and `make test` (each builds .venv first if needed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned to the CPU wheel that lies on disk; the package metadata itself only asks torch>=2.2.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet "$(TORCH)" -e ".[test,demo,cli]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bilevel demo --output-dir runs

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/python -m ruff check bilevel tests benchmarks examples

bench: $(STAMP)
	$(BIN)/python benchmarks/implicit_diff.py

clean:
	rm -rf $(VENV) build *.egg-info
