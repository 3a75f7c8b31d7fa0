# jobrunner — the two commands a fresh machine needs:
#   make run    create .venv, install, start Redis + API + one worker per pool
#   make test   create .venv, install, run the whole test suite on real processes

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Extra arguments for the local runner, e.g. make run SCALE=gevent=3,threads=2; on a
# cluster, one component per machine: make run ROLE=worker POOLS=gevent (REDIS_URL set)
SCALE  ?=
ROLE   ?=
POOLS  ?=

.PHONY: install run cluster test lint format bench chaos mutate lock audit clean

# requirements.lock pins every dependency at the version the tests ran with (make lock
# writes it); installing under it gives a fresh machine those versions.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m services.devstack $(if $(SCALE),--scale $(SCALE)) $(if $(ROLE),--role $(ROLE)) $(if $(POOLS),--pools $(POOLS))

# Redis, the API and two worker hosts as network namespaces of this machine (Linux, root).
cluster: $(STAMP)
	$(PY) -m services.devstack.cluster $(ARGS)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir $(VENV)/site
	# Two phases (tests/conftest.py): the suite on two xdist workers, then the tests that
	# compare timings with what the machine gives, alone.
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not timed" --durations=30
	$(PY) -m pytest -q -m timed --durations=10
	# A few promised mechanisms broken on purpose, in a copy: a named test must catch each.
	$(PY) -m tests.mutations --fast --no-baseline

# Every promised mechanism broken on purpose, in a copy of the project: each must fail a
# named test (tests/mutations/, docs/guarantees.md). ARGS="--only ID", ARGS=--fast.
mutate: $(STAMP)
	$(PY) -m tests.mutations $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# ARGS=--quick for a shorter run; ARGS="--only peers,scale,profile --peers huey,rq" for the
# steps beside the other job queues alone (their virtual environments are made on first use
# under ~/.cache/jobrunner-bench, from PyPI). wrk (Debian: apt-get install -y wrk) drives
# the HTTP load.
bench: $(STAMP)
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev,bench]'
	$(PY) -m bench.side_by_side $(ARGS)

# A chaos soak (docs/chaos.md): jobs of every pool at a steady rate while workers, a
# prefork pool process, the API and Redis are killed at random, then the invariants; exit
# status 1 if one fails. DURATION seconds, SEED; ARGS=--cluster on the multi-host test bed.
DURATION ?= 300
SEED     ?= 1
chaos: $(STAMP)
	$(PY) -m services.devstack.chaos --duration $(DURATION) --seed $(SEED) $(ARGS)

# After changing a dependency in pyproject.toml: resolve every extra again, then install.
lock: $(STAMP)
	$(PY) -m pip install --quiet 'pip-tools>=7.4'
	$(VENV)/bin/pip-compile --quiet --all-extras --strip-extras --allow-unsafe \
		--no-emit-index-url --no-emit-find-links --output-file requirements.lock pyproject.toml
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev,bench]'

# Known vulnerabilities in the locked versions (pip-audit asks PyPI's JSON API per version).
audit: $(STAMP)
	$(PY) -m pip install --quiet 'pip-audit>=2.7'
	$(VENV)/bin/pip-audit --strict --no-deps --disable-pip --progress-spinner off -r requirements.lock

clean:
	rm -rf $(VENV) .run .pytest_cache .ruff_cache
