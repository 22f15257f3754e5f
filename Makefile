# sweeper: `make run` runs a study on the embedded defaults (SQLite storage, local MLflow store);
# `make test` runs lint (ruff check and format) and the test suite. Both install the project first.
PY ?= python3
SHARED_DATA := ../shared/data/cifar10-jpeg.tar.xz
DATA ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),cifar10)
STUDY ?= demo
TRIALS ?= 3
# CPU-sized trials unless FULL=1 (the full recipe: 24 epochs on all 45k/5k images; wants a GPU)
SMOKE_SET := data.train_limit=5000 data.test_limit=1000 data.val_size=1000 model.width=0.25 train.epochs=2 train.batch_size=128
RUN_SET ?= $(if $(FULL),,$(SMOKE_SET))

.PHONY: install run lint test test-fast bench ui stack-test

install:
	$(PY) -m pip install -q -e '.[test]'

run: install
	sweeper study run $(STUDY) --data $(DATA) --n-trials $(TRIALS) $(if $(RUN_SET),--set $(RUN_SET))
	@echo "see its runs with: make ui STUDY=$(STUDY)  (it prints the link to the study's runs view)"

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Two pytest-xdist workers: on the 2-core CI machine one waits on a server, a subprocess or a deadline while the
# other trains; tests sharing a session server or the decoded CIFAR-10 copy stay on one worker (--dist loadgroup).
# pytest exits 5 when it collected no test, and make fails on it.
XDIST ?= -n 2 --dist loadgroup

test: lint
	$(PY) -m pytest -q $(XDIST)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(XDIST)

bench: install
	$(PY) -m benchmarks.bench $(BENCH_ARGS)

# the runs view: MLflow 3 opens an experiment in its GenAI view unless the link asks for workflowType=machine_learning
ui:
	@id=$$(sweeper study show $(STUDY) --json 2>/dev/null | $(PY) -c "import json, sys; print(json.load(sys.stdin)['attrs']['mlflow_experiment_id'])" 2>/dev/null); \
	if [ -n "$$id" ]; then echo "study $(STUDY)'s runs: http://127.0.0.1:5000/#/experiments/$$id/runs?workflowType=machine_learning"; \
	else echo "no study $(STUDY) in sweeper.db: open the link 'sweeper study run' printed, or http://127.0.0.1:5000"; fi
	MLFLOW_DISABLE_TELEMETRY=true NO_ALBUMENTATIONS_UPDATE=1 MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
		mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

# The compose stack run for real and checked (docs/stack.md): root, a Docker engine (started if none runs),
# the Compose v2 plugin and about 15 GB of free disk; builds local base images when no registry answers.
stack-test:
	$(PY) scripts/stack_test.py $(STACK_ARGS)
