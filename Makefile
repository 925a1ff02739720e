# Two commands on a fresh machine: `make demo` and `make test`. Each installs into .venv
# once (a stamp keyed by pyproject.toml makes the second run install nothing).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALL_KEY := $(shell cat pyproject.toml requirements/cpu-excludes.txt requirements/cpu-constraints.txt | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(INSTALL_KEY)
RECIPE ?= recipes/toyworld/imf.yaml
# `make demo SEED=1`: the same run with another recipe seed: the trainings (SFT, DPO, WRPO, controls) change,
# the sources' samples do not (they are seeded by each source's `sampling.seed` and the prompt).
SEED ?= 0

export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo demo-explicit demo-fusechat test test-slow lint toyworld clean-runs

install: $(STAMP)

# torch goes in first and pinned, through pip (the machine's pip config knows where the
# CPU wheel is; uv does not read it), so that nothing resolves the multi-GB CUDA build.
# Every other package is held at the version of requirements/cpu-constraints.txt: an unpinned
# library upgrade changed the toy demo's trained models once (benchmarks/RESULTS.md).
$(STAMP): pyproject.toml requirements/cpu-excludes.txt requirements/cpu-constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/uv pip install -q --python $(BIN)/python --excludes requirements/cpu-excludes.txt \
		--constraints requirements/cpu-constraints.txt -e '.[cpu,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(BIN)/fusechat3 run $(RECIPE) --set seed=$(SEED)
	$(BIN)/fusechat3 report $(RECIPE) --set seed=$(SEED)
	$(BIN)/fusechat3 push $(RECIPE) --set seed=$(SEED) --local-dir

# Explicit fusion (FuseLLM) on the toy world: represent -> teacher -> fuse-train (+ its LM-only control) -> eval.
demo-explicit: $(STAMP)
	$(BIN)/fusechat3 run recipes/toyworld/explicit.yaml --set seed=$(SEED)

# FuseChat-1.0/2.0 on the toy world: pairwise fusion (the target with each source), then merges of the three
# pairwise-fused targets (VaRM, SCE in both variants, linear, TIES), every model evaluated.
demo-fusechat: $(STAMP)
	$(BIN)/fusechat3 run recipes/toyworld/fusechat.yaml --set seed=$(SEED)

# The fast suite in TEST_JOBS processes (pytest-xdist), a test file per process at a time (module fixtures such as
# the pipeline's run are made once): many tests wait on subprocesses (vLLM engines, the sandbox, CLI runs), so two
# processes on two cores take about 6 minutes instead of 9.
TEST_JOBS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

toyworld: $(STAMP)
	$(BIN)/fusechat3 toyworld build

clean-runs:
	rm -rf runs
