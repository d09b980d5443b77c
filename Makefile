# vane — developer entry points. `make run` and `make test` work on a fresh Debian 12 machine.
# Debian's python3.11 where there is one: the package runs on it (debian/rules), so the venv,
# the tests and `make bench` do too, whatever else is first on PATH
PYTHON  ?= $(firstword $(wildcard /usr/bin/python3.11) python3)
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(shell cat setup.cfg | cksum | cut -d' ' -f1)
CONFIG  ?= etc/vaned

.PHONY: install test run lint bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@./scripts/make-venv $(PYTHON) $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

run: $(STAMP)
	$(VENV)/bin/vaned --config $(CONFIG)

lint: $(STAMP)
	$(VENV)/bin/ruff check vane tests bench

bench: $(STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf --one-file-system $(VENV) build dist *.egg-info .pytest_cache .ruff_cache

-include mk/*.mk
