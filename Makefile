# gpicture: the two commands are `make repro` and `make test`; both set up first.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python

.PHONY: setup lock test repro doctor bench clean

setup:
	@bash scripts/setup.sh

# Re-resolve requirements.lock from pyproject.toml (uv, with hashes), keeping the current pins
# where they still fit (UPGRADE=1: the newest releases); then `make setup` installs it.
lock:
	@$${PYTHON:-python3.11} scripts/lock.py write --uv "$$(bash scripts/uv.sh)" $(if $(UPGRADE),--upgrade)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

repro: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro

doctor: setup
	$(VENV)/bin/gpicture doctor

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf build gpicture/_native*.so .pytest_cache
