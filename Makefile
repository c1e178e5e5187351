# Set-up happens on first use: `make demo` and `make test` each create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Test files run in this many processes (pytest-xdist; 0: one process). Most tests wait on servers and
# subprocesses they start, so two processes keep two cores busy: 8.1 instead of 10.6 minutes here.
TEST_WORKERS ?= 2

.PHONY: setup demo test protos check-protos bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(VENV)/bin/imgsim demo

test: setup check-protos
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

protos: setup
	$(PY) scripts/gen_protos.py

check-protos: setup
	$(PY) scripts/gen_protos.py --check

clean:
	rm -rf $(VENV) demo-out .pytest_cache
