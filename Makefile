# The two commands a new machine needs: `make demo` and `make test`. Both set everything up.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= /tmp/dicomfleet-demo

.PHONY: demo test bench venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(PY) -m tests.synthetic $(DEMO)/in --slices 40
	$(VENV)/bin/dicomfleet convert $(DEMO)/in --out $(DEMO)/out --format png --format tiff
	@echo "outputs and manifest under $(DEMO)/out"

test: $(STAMP)
	bash scripts/test-deps.sh
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

# Bytecode as an installed package has it: with PYTHONDONTWRITEBYTECODE set (as on the CI
# machines), an editable install would otherwise compile the project's modules in every run.
bench: $(STAMP)
	$(PY) -m compileall -q shared producer workers bench
	$(PY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
