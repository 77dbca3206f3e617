# Two commands for a fresh machine: `make run` and `make test`. Everything else here supports them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RL_TRADING_HOME ?= $(CURDIR)/.rl_trading
export GX_ANALYTICS_ENABLED := false
export PYTHONUNBUFFERED := 1

.PHONY: run test install lint dagster-ui mlflow-ui rollback paper paper-fake clean-state

install: $(STAMP)

# torch==2.13.0 first, alone: pip picks the CPU wheel from the local find-links folder where one exists.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m pipelines.run_pipeline $(RUN_ARGS)

# One pytest worker per core (at most 4), each file on one worker: module fixtures train once; `make test
# TEST_WORKERS=0` runs in this process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile \
		--cov=trading_core --cov=trading_assets --cov=resources --cov=pipelines --cov-report=term

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

dagster-ui: $(STAMP)
	mkdir -p $(RL_TRADING_HOME)/dagster
	DAGSTER_HOME=$(RL_TRADING_HOME)/dagster $(BIN)/dagster dev -w workspace.yaml

mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(RL_TRADING_HOME)/mlflow/mlflow.db \
		--default-artifact-root file://$(RL_TRADING_HOME)/mlflow/artifacts --port 5000

rollback: $(STAMP)
	$(BIN)/python -m pipelines.rollback

# Paper trading: the local simulated broker by default; paper-fake goes through alpaca-py against a local fake Alpaca.
paper: $(STAMP)
	$(BIN)/python -m pipelines.paper_trading $(ARGS)

paper-fake: $(STAMP)
	$(BIN)/python -m pipelines.paper_trading --fake-alpaca $(ARGS)

clean-state:
	rm -rf $(RL_TRADING_HOME)
