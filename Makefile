# Two commands matter: `make run` (the default sweep) and `make test` (the whole test suite).
# Each creates .venv on first use and installs what it needs; nothing else is a manual step.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on this kind of machine's disk; pinning it keeps pip from pulling a
# multi-GB CUDA wheel that a CPU machine cannot use. A GPU runner overrides TORCH_SPEC="torch".
TORCH_SPEC ?= torch==2.13.0
OUT ?= out

.PHONY: run test venv clean

$(BIN)/.installed-run: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed-run
	$(BIN)/pip install -q -e ".[test]"
	touch $@

venv: $(BIN)/.installed-run

run: $(BIN)/.installed-run
	$(BIN)/moebench --json $(OUT)/sweep.json --csv $(OUT)/sweep.csv --plot $(OUT)/sweep.png

test: $(BIN)/.installed-test
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
