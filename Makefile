# The two commands of the README: `make run` and `make test`.
PORT ?= 3000
PY := .venv/bin/python

.PHONY: run test test-fast test-stack bootstrap lint bench

bootstrap:
	scripts/bootstrap.sh

run:
	scripts/bootstrap.sh
	$(PY) manage.py ensure_admin
	$(PY) manage.py serve --port $(PORT) --host $${ISOL8_BIND:-127.0.0.1} --generate-key

# Every layer, fastest first: lint and import rules, then unit and API tests
# (no Docker, about a minute), then the real stack in both sandbox modes.
test: test-fast test-stack

test-fast:
	scripts/bootstrap.sh --dev --no-docker
	$(MAKE) lint
	$(PY) -m pytest tests/unit tests/api $(PYTEST_ARGS)

# The stack tests run on SQLite (both sandbox modes) and on PostgreSQL (the
# distribution's, started by scripts/postgres.sh; launcher mode). DB=sqlite or
# DB=postgres runs one of them.
DB ?= both
test-stack:
	scripts/bootstrap.sh --dev
ifneq ($(DB),postgres)
	$(PY) -m pytest tests/stack $(PYTEST_ARGS)
endif
ifneq ($(DB),sqlite)
	scripts/postgres.sh
	ISOL8_TEST_DB=postgres ISOL8_TEST_MODES=launcher $(PY) -m pytest tests/stack $(PYTEST_ARGS)
endif

lint:
	.venv/bin/ruff check .
	.venv/bin/mypy .
	PYTHONPATH=. .venv/bin/lint-imports
	$(PY) manage.py spectacular --validate --fail-on-warn --file /dev/null

bench:
	$(PY) bench/run.py
