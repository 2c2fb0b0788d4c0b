# The two commands of the README: `make run` and `make test`.
PORT ?= 3000
PY := .venv/bin/python

.PHONY: run test bootstrap lint bench

bootstrap:
	scripts/bootstrap.sh

run:
	scripts/bootstrap.sh
	$(PY) manage.py ensure_admin
	$(PY) manage.py serve --port $(PORT) --host $${ISOL8_BIND:-127.0.0.1} --generate-key

test:
	scripts/bootstrap.sh --dev
	$(PY) -m pytest $(PYTEST_ARGS)

lint:
	.venv/bin/ruff check .
	.venv/bin/mypy .

bench:
	$(PY) bench/run.py
