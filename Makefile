# The README's commands. Each one creates or updates the virtualenv from the project's own files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PROFILES ?= 100000
LATENCY ?= fixed
SEEDS ?= 200
SANDBOX_PORT ?= 4010
UI_PORT ?= 3000
SANDBOX_KEY := SG.sandbox-local-dev-key

export DAGSTER_HOME := $(CURDIR)/.dagster_home
export DAGSTER_DISABLE_TELEMETRY := 1

.PHONY: install demo test dev bench soak lint format clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml setup.cfg
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m sendgrid_pipeline_tests.devkit.dev --init-home
	touch $@

demo: $(INSTALLED)  ## the whole export against the bundled local SendGrid sandbox (VERBOSE=1: Dagster's logs)
	$(BIN)/python -m sendgrid_pipeline_tests.devkit.demo $(if $(filter 1 yes true,$(VERBOSE)),--verbose)

test: $(INSTALLED)  ## every test (starts its own sandbox on a free loopback port)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

dev: $(INSTALLED)  ## the sandbox plus the Dagster UI, with run history in .dagster_home (the demo's runs are not there)
	$(BIN)/python -m sendgrid_pipeline_tests.devkit.dev --sandbox-port $(SANDBOX_PORT) --ui-port $(UI_PORT)

soak: $(INSTALLED)  ## the crash-and-change soak over SEEDS seeds (SIGKILL, change, rerun)
	$(BIN)/python -m sendgrid_pipeline_tests.sync.test_crash_soak $(SEEDS)

bench: $(INSTALLED)  ## benchmark one destination at PROFILES profiles (LATENCY=realistic: SendGrid-like timing)
	$(BIN)/python -m sendgrid_pipeline_tests.devkit.bench --profiles $(PROFILES) --latency $(LATENCY)

lint: $(INSTALLED)  ## ruff, then `dg check defs` (the code location loads, as [tool.dg] names it)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg check defs

format: $(INSTALLED)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache data/state data/storage data/reports
