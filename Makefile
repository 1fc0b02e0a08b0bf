# warren: `make up` runs the system, `make test` runs the suite. Both set up what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install rabbitmq restic up down status cluster-up cluster-down test unit lint typecheck check bench bench-restic soak clean compose-test mutants

install: $(STAMP) rabbitmq

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The broker binary: installed with apt-get when we can, otherwise one sentence on how.
rabbitmq:
	@sh scripts/ensure-rabbitmq.sh

# TLS=1: every process reaches RabbitMQ over amqps://, with a throwaway CA in .warren/tls/.
TLS_FLAG = $(if $(filter-out 0 no false,$(TLS)),--tls)

up: install
	$(PY) -m devtools.localcluster up $(TLS_FLAG)

down:
	@if [ -x $(PY) ]; then $(PY) -m devtools.localcluster down; fi

status: install
	$(PY) -m devtools.localcluster status

# The same on a three-node RabbitMQ cluster with quorum queues (data in .warren/cluster/).
cluster-up: install
	$(PY) -m devtools.localcluster cluster-up $(TLS_FLAG)

cluster-down:
	@if [ -x $(PY) ]; then $(PY) -m devtools.localcluster cluster-down; fi

# Chromium is optional: only the management-UI test needs it (skipped without it, outside CI).
# The in-memory tests mostly wait (timers, heartbeats), so they run four at a time; the
# tests on a real RabbitMQ node run one at a time, as their timings assume. Both parts run
# even when the first fails, so one run shows every failure.
test: install
	@sh scripts/ensure-chromium.sh
	$(PY) -m pytest -q -m "not integration" -n 4; unit=$$?; \
	$(PY) -m pytest -q -m integration && exit $$unit

unit: $(STAMP)
	$(PY) -m pytest -q -m "not integration" -n 4

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests bench

check: lint typecheck test

# The README's Docker commands, for real, on both compose files; installs and starts what it
# needs (Docker, stand-in base images where no registry answers) and removes all it made.
compose-test:
	@bash scripts/compose-test.sh

# Mutation testing (mutmut, config in pyproject.toml) against the in-memory tests only; not
# part of `make test`. By default only the functions that carry warren's promises (about
# 3 minutes on two cores); MUTANTS='*' for every mutant of the modules (hours), or any glob
# of mutant names, e.g. MUTANTS='client.units.*'. Results: .venv/bin/mutmut results.
PROMISES := 'client.units.xǁChunkPackǁis_complete__*' 'client.units.xǁChunkPackǁ_on_chain__*' \
	'client.units.xǁChunkPackǁon_replica__*' 'client.units.xǁChunkPackǁsettle__*' \
	'client.units.xǁChunkPackǁtake_stored__*' 'client.units.xǁFileJobǁoutcome__*' \
	'client.upload.xǁBatchǁ_judge__*' 'worker.orders.xǁManagerOnlyǁcheck__*' \
	'worker.intake.xǁIntakeǁ_check_sender__*' 'worker.intake.xǁIntakeǁ_addressed_here__*' \
	'manager.service.x_check_worker_sender__*' 'manager.holdings.xǁHoldingsǁholders_for__*'
MUTANTS ?= $(PROMISES)

mutants: $(STAMP)
	$(VENV)/bin/mutmut run --max-children 2 $(MUTANTS)
	$(VENV)/bin/mutmut results

# `make bench` ends with bench-restic's table, appended to bench/results.md, when restic is
# there or can be installed (otherwise ensure-restic.sh says how, and bench.py's report stands).
bench: install
	$(PY) bench/bench.py
	@if sh scripts/ensure-restic.sh; then $(PY) bench/restic.py; fi

# The restic binary, for bench-restic: installed as the broker's is.
restic:
	@sh scripts/ensure-restic.sh

# warren (2 copies) against restic (1 copy) on the same files; BENCH_ARGS e.g.
# '--size-mib 32 --small-files 500 --runs 1' for a quick check.
bench-restic: install restic
	$(PY) bench/restic.py $(BENCH_ARGS)

soak: install
	$(PY) bench/soak.py --minutes $${SOAK_MINUTES:-5}

clean: down
	rm -rf .warren $(VENV) .pytest_cache .mypy_cache .ruff_cache
