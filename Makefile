# Two commands matter: `make demo` (the main job end to end) and `make test` (the whole suite, as CI runs it).
# Everything else is a step of those two. See README.md.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The stack profile: local (default; each engine in its local mode) or cluster (PostgreSQL, Airflow's components, a
# Hive metastore, Spark standalone, a Ray cluster): `make stack-up STACK=cluster`, `make demo STACK=cluster`.
STACK ?= local
STACKCTL := $(PY) -m stack
WHEELHOUSE ?= $(HOME)/.cache/mlops-airflow/wheels
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_ARGS ?=
MODEL ?= penguins-classification

.PHONY: help venv tools browser postgres airflow-up stack-up stack-down stack-status format lint test test-unit \
        test-integration test-cluster demo \
        serve tail-metrics bench lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(INSTALLED): requirements.txt constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 ($(PYTHON)) is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	@# The package index here sends no cache headers, so pip's own cache keeps nothing: keep the wheels ourselves.
	mkdir -p $(WHEELHOUSE)
	$(VENV)/bin/pip download -q -r requirements.txt -c constraints.txt -d $(WHEELHOUSE)
	$(VENV)/bin/pip install -q --no-index --find-links $(WHEELHOUSE) -r requirements.txt -c constraints.txt
	$(VENV)/bin/pip check
	touch $@

venv: $(INSTALLED) ## create .venv from requirements.txt + constraints.txt (wheels cached in ~/.cache/mlops-airflow)

tools: venv ## fetch the S3 server (go install) and the Kafka/Spark jars (Maven Central), cached
	$(STACKCTL) tools --profile $(STACK)

stack-up: tools $(if $(filter cluster,$(STACK)),postgres) ## start the STACK profile's services; migrate the Airflow home
	$(STACKCTL) up --profile $(STACK)

airflow-up: tools $(if $(filter cluster,$(STACK)),postgres) ## stack-up plus Airflow (web UI on http://127.0.0.1:8080)
	$(STACKCTL) up --profile $(STACK) --airflow

stack-down: ## stop everything stack-up started
	@if [ -x $(PY) ]; then $(STACKCTL) down; fi

stack-status: venv ## health of each local service
	$(STACKCTL) status --profile $(STACK)

.PHONY: compose-env
compose-env: ## .env for docker-compose.yaml: fresh random credentials, mode 0600; an existing .env is kept (FORCE=1 replaces it)
	$(if $(wildcard $(PY)),$(PY),python3) -m stack.compose_env $(if $(FORCE),--force)

lint: venv ## ruff format + ruff check (with Airflow's AIR rules), mypy, and a dependency audit (pip-audit)
	$(VENV)/bin/ruff format --check ml plugins dags stack tests bench
	$(VENV)/bin/ruff check ml plugins dags stack tests bench
	@# A full disk makes mypy report an INTERNAL ERROR (and the services fail mid-write): say so first.
	$(STACKCTL) disk
	$(VENV)/bin/mypy ml plugins stack
	@# Dependency audit of what .venv has installed, by pip-audit from its own small venv (.venv-tools; never .venv).
	@# Known vulnerabilities fail the build unless security/pip-audit-ignore.txt lists their ID with a reason. When the
	@# vulnerability service (PyPI's JSON API) cannot be reached, pip-audit skips every package and still says "No known
	@# vulnerabilities found": that is reported as an audit NOT performed, without failing the build, never as a pass.
	@mkdir -p .stack; rm -f .stack/pip-audit.json; : > .stack/pip-audit.log; \
	if [ ! -x .venv-tools/bin/pip-audit ]; then \
	  { $(PYTHON) -m venv .venv-tools && .venv-tools/bin/pip install -q pip-audit==2.10.1; } >>.stack/pip-audit.log 2>&1 \
	  || { rm -rf .venv-tools; echo "pip-audit could not be installed (.stack/pip-audit.log): audit NOT performed"; exit 0; }; \
	fi; \
	unexplained=$$(sed -e 's/#.*//' security/pip-audit-ignore.txt | awk 'NF == 1 {print $$1}'); \
	if [ -n "$$unexplained" ]; then echo "security/pip-audit-ignore.txt: no reason given for $$unexplained"; exit 1; fi; \
	ignores=$$(sed -e 's/#.*//' security/pip-audit-ignore.txt | awk 'NF > 1 {printf "--ignore-vuln %s ", $$1}'); \
	.venv-tools/bin/pip-audit --path $(VENV)/lib/python3.11/site-packages --progress-spinner off --format json \
	  --output .stack/pip-audit.json $$ignores >>.stack/pip-audit.log 2>&1 || true; \
	audited=$$( { grep -o '"vulns"' .stack/pip-audit.json 2>/dev/null || true; } | wc -l); \
	skipped=$$( { grep -o '"skip_reason"' .stack/pip-audit.json 2>/dev/null || true; } | wc -l); \
	if [ "$$audited" -eq 0 ]; then \
	  why=$$( { grep -o '"skip_reason": "[^"]*"' .stack/pip-audit.json 2>/dev/null \
	            || tail -n 1 .stack/pip-audit.log; } | sed -n 1p | cut -c1-160); \
	  echo "pip-audit could not reach the vulnerability service: audit NOT performed ($$skipped packages skipped," \
	       "e.g. $$why; see .stack/pip-audit.log)"; \
	  exit 0; \
	fi; \
	$(PY) -c 'import json, sys; deps = json.load(open(sys.argv[1]))["dependencies"]; \
	  found = [(d["name"], d["version"], v["id"], ", ".join(v["fix_versions"]) or "no fixed version") \
	           for d in deps for v in d.get("vulns", [])]; \
	  skipped = [d["name"] for d in deps if "skip_reason" in d]; \
	  print(f"pip-audit: {len(deps) - len(skipped)} packages audited, {len(found)} known vulnerabilities not in " \
	        f"security/pip-audit-ignore.txt" + (f"; NOT audited: {skipped}" if skipped else "")); \
	  [print(f"  {name} {version}  {vuln}  fixed in: {fix}") for name, version, vuln, fix in found]; \
	  sys.exit(1 if found else 0)' .stack/pip-audit.json

format: venv ## apply the one formatter (ruff format) to the whole tree
	$(VENV)/bin/ruff format ml plugins dags stack tests bench

browser: ## headless Chromium + chromedriver from Debian's packages, for the UI test (needs root or sudo)
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; \
	fi

test: venv lint browser ## the whole suite: unit tests without the stack, then the rest against it (what CI runs)
	@# Unit tests first, outside the stack's environment: they prove they need no service and no credentials.
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)
	$(MAKE) stack-up
	@rc=0; $(STACKCTL) run --profile $(STACK) -- $(PY) -m pytest tests/integration tests/e2e $(PYTEST_ARGS) || rc=$$?; $(STACKCTL) down; \
	exit $$rc

test-cluster: venv postgres ## the cluster profile: bring it up, run the DAG on it, check the work was distributed
	$(MAKE) stack-up STACK=cluster
	@rc=0; $(STACKCTL) run --profile cluster -- $(PY) -m pytest tests/cluster $(PYTEST_ARGS) || rc=$$?; \
	$(STACKCTL) down; exit $$rc

postgres: ## PostgreSQL from Debian's packages, for the cluster profile (needs root or sudo)
	@if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; \
	fi

test-unit: venv ## fast unit tests only (no services, no stack environment)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: stack-up ## integration tests against the running stack (leaves it up)
	$(STACKCTL) run --profile $(STACK) -- $(PY) -m pytest tests/integration $(PYTEST_ARGS)

demo: tools $(if $(filter cluster,$(STACK)),postgres) ## the main job end to end on this machine: stack + Airflow up, demo data in, DAG run via REST
	$(STACKCTL) up --profile $(STACK) --airflow
	$(STACKCTL) run --profile $(STACK) -- $(PY) -m stack.demo $(DEMO_ARGS)

serve: stack-up ## the prediction service for MODEL's champion on http://127.0.0.1:8000 (gunicorn; as `serving`: read-only, no S3 key)
	$(STACKCTL) run --profile $(STACK) --as serving -- $(PY) -m ml serve --model $(MODEL)

tail-metrics: venv ## follow the training-metrics topic in the terminal
	$(STACKCTL) run --profile $(STACK) -- $(PY) -m ml events tail mlops.training.metrics.v1

bench: stack-up ## ratio benchmarks B1-B10 and B3b, JSON into bench/results/ (Airflow is started for B7 only)
	$(STACKCTL) run --profile $(STACK) -- $(PY) -m bench

lock: ## re-resolve requirements.txt into constraints.txt (in a scratch venv)
	rm -rf /tmp/mlops-lock && $(PYTHON) -m venv /tmp/mlops-lock
	/tmp/mlops-lock/bin/pip install -q -r requirements.txt
	{ echo "# Full resolution of requirements.txt (Python 3.11, Linux x86_64), like Airflow's constraint files."; \
	  echo "# Regenerate with \`make lock\` after changing requirements.txt."; \
	  /tmp/mlops-lock/bin/pip freeze --all | grep -v -E '^(pip|wheel)=='; } > constraints.txt

clean: stack-down ## remove the stack's data and the venvs (project and audit tool)
	rm -rf .stack $(VENV) .venv-tools
