# sensorcast: the verbs people expect. `make demo` and `make test` are the two commands.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Local CPU wheel of torch; any other torch spec pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
DATA ?= ../shared/data
# docker-compose validates docker-compose.yml and, with podman (runc, netavark, debootstrap
# for the base images), runs the stack in tests/stack: no Docker engine needed.
# prometheus: for promtool (rule checks), 19 MB download, ~7 s here; its server is not wanted (stopped below).
SYSTEM_PACKAGES := mosquitto influxdb chromium chromium-driver docker-compose \
	podman runc netavark aardvark-dns iptables debootstrap prometheus nats-server

.PHONY: setup setup-system setup-service demo test test-fast lint bench bench-ingest \
	bench-inference bench-latency bench-scale bench-ett bench-ett-table bench-nab bench-faults bench-tep soak faults clean env-example check-image-deps compose-config \
	stack-images test-stack

setup: setup-system $(VENV)/.installed  ## venv with service, trainer and test tools

# Servers the integration tests start themselves (Debian packages). Only as root.
setup-system:
	@missing=""; for b in mosquitto influxd nats-server chromium chromedriver docker-compose podman runc debootstrap iptables promtool; do \
	  command -v $$b >/dev/null || [ -x /usr/sbin/$$b ] || missing="$$missing $$b"; done; \
	[ -x /usr/lib/podman/netavark ] || missing="$$missing netavark"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages (missing:$$missing)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	    (systemctl disable --now prometheus || invoke-rc.d prometheus stop) >/dev/null 2>&1 || true; \
	  else echo "missing:$$missing — run as root or: sudo apt-get install -y $(SYSTEM_PACKAGES)"; exit 1; fi; fi

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[train,dev,demo]"
	touch $@

# The service alone (what the container runs): no torch.
setup-service:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -e ".[demo]"

demo: $(VENV)/.installed  ## whole job on embedded defaults (no servers needed); ARGS="--duration 60 ..."
	$(VENV)/bin/sensorcast demo $(ARGS)

test: setup  ## the full suite, real servers included
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed  ## unit and contract tests only
	$(PY) -m pytest -q -m "not integration and not browser and not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check service tools evaluation training tests
	$(VENV)/bin/mypy service tools evaluation training
	$(VENV)/bin/lint-imports --no-cache --no-logo

bench: bench-ingest bench-inference bench-latency

bench-ingest: setup
	$(VENV)/bin/sensorcast bench ingest

bench-inference: $(VENV)/.installed
	$(VENV)/bin/sensorcast bench inference
	$(VENV)/bin/python -m training.bench_cells

bench-latency: setup  ## publish->alert and GET forecast latency at 10k readings/s
	$(VENV)/bin/sensorcast bench latency

# NATS scale-out (issue #15): its own nats-server, a 100k-stream backlog over 16 partitions,
# 1-3 real inference replicas, catch-up after a restore, kill -9 failover; several minutes.
bench-scale: setup  ## CPU per reading of 1-3 NATS inference replicas, failover time, catch-up speed
	$(VENV)/bin/sensorcast bench scale $(SCALE_ARGS)

# ETTh1: trains what CELLS / HORIZONS / LAGS ask for (nothing by default: every cell x
# horizon x lag setting is hours on 2 cores), e.g. CELLS=gru,lstm (HORIZONS=96,336 LAGS=96,0 by default),
# merging each run into docs/results/ett.json; then prints the table of every recorded run.
CELLS ?=
HORIZONS ?= 96,336
LAGS ?= 96,0
ETT_ARGS ?=
bench-ett: $(VENV)/.installed  ## ETTh1 table; CELLS=gru [HORIZONS=96 LAGS=0] trains those first
	$(if $(CELLS),nice -n 10 $(PY) -m training.bench_ett --data $(DATA)/ett/ETTh1.csv --cells $(CELLS) \
	  --horizons $(HORIZONS) --lags $(LAGS) --threads 1 $(ETT_ARGS))
	$(PY) -m training.ett_table --data $(DATA)/ett/ETTh1.csv

bench-ett-table: $(VENV)/.installed  ## the ETTh1 table from docs/results/ett.json (no training)
	$(PY) -m training.ett_table

# NAB (data: $(DATA)/nab). The headline GRU is trained once on the probationary rows and
# cached under NAB_WORK (default: <tmp>/sensorcast-nab, outside the repository).
bench-nab: $(VENV)/.installed  ## NAB scores of the trained GRU, persistence and Windowed Gaussian
	$(PY) -m evaluation.nab --data $(DATA)/nab $(if $(NAB_WORK),--work $(NAB_WORK))

# Simulated faults of every kind through the live engine (tools/bench/faults.py); a few minutes.
bench-faults: $(VENV)/.installed  ## per-kind recall, delay, false alerts per 1,000 clean stream-hours
	$(VENV)/bin/sensorcast bench faults $(if $(FAULTS_OUT),--out $(FAULTS_OUT))

# Tennessee Eastman (data: SENSORCAST_TEP_DIR, else $(DATA)/tep). The trained model is
# cached under TEP_WORK (default: <tmp>/sensorcast-tep, outside the repository).
bench-tep: $(VENV)/.installed  ## PCA Q/T^2 beside a GRU trained on d00, replayed through the live engine
	$(PY) -m evaluation.tep --data "$${SENSORCAST_TEP_DIR:-$(DATA)/tep}" $(if $(TEP_WORK),--work $(TEP_WORK))

# The full 60 s database outage here; CI (make test) uses the tests' short default.
FAULT_OUTAGE_S ?= 60
# The hostile-input table of docs/reliability.md: its unit rows run here too, beside the
# real-server suites and the million-topic cardinality flood.
HOSTILE_UNIT := tests/unit/test_ingest_decode.py tests/unit/test_stream_ids.py \
	tests/unit/test_spool_writer.py tests/unit/test_engine_cardinality.py tests/unit/test_points_bounded.py \
	tests/unit/test_startup_refusals.py tests/unit/test_model_bytes.py tests/unit/test_error_bodies.py \
	tests/unit/test_api_auth.py tests/contract/test_store_contract.py
faults: setup  ## fault injection, hostile input and security suites on real servers
	SENSORCAST_FAULT_OUTAGE_S=$(FAULT_OUTAGE_S) $(PY) -m pytest -q tests/faults tests/hostile tests/security \
	  tests/integration/test_cardinality_flood.py tests/integration/test_alert_topics.py $(HOSTILE_UNIT)

soak: setup
	$(VENV)/bin/sensorcast bench soak

# deploy/env.example from the settings (a test fails when it is stale).
env-example: $(VENV)/.installed
	SENSORCAST=$(VENV)/bin/sensorcast sh deploy/make-env-example.sh > deploy/env.example

# What the service image installs, checked without Docker: clean venv without torch,
# and a wheel for every dependency on linux amd64 and arm64 (needs PyPI).
check-image-deps: $(VENV)/.installed
	$(PY) -m pytest -q tests/integration/test_service_install.py

# The compose stack under podman (issue #13): base and stand-in images from Debian's
# packages, the project's images from the Dockerfile, then docker-compose up and the end to
# end checks in containers. `make test` runs it too. As root (podman here is rootful).
stack-images:  ## build the stand-ins, sensorcast:0.1.0 and sensorcast-train:0.1.0 with podman
	bash deploy/standins/build.sh

test-stack: setup  ## the stack tests alone (builds what is missing, brings the stack up and down)
	$(PY) -m pytest -q -m stack tests/stack

# Validate docker-compose.yml (needs docker-compose; no Docker engine).
compose-config: $(VENV)/.installed
	$(PY) -m pytest -q tests/unit/test_deploy_files.py -k compose

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .grimp_cache data var
