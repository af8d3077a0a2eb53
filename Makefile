# The two commands a newcomer needs: `make demo` (the default pipeline) and `make test`.
# Both create or reuse .venv and are safe to run twice.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export DVC_NO_ANALYTICS := 1
export MPLBACKEND := Agg

.PHONY: demo test test-all venv lint bench report

venv: $(STAMP)

# torch first, pinned: it takes the local CPU wheel instead of a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m diffuser demo

# summary, figures and report again from finished cells: make report [SPEC=exp_specs/NAME.yaml]
SPEC ?= config/config.yaml
report: $(STAMP)
	$(BIN)/python -m diffuser report --spec $(SPEC)

# the default suite leaves out tests marked `slow` (real-pipeline kill/resume, DVC repro twice, the
# project sweep on SLURM, long learning runs: ~25 more minutes on 2 cores); test-all runs everything
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py
