# Two commands on a fresh machine: `make demo` and `make test`. Each creates the virtual
# environment and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench abi clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lib-mlx demo

test: $(STAMP)
	scripts/install-browser.sh $(PY)
	scripts/install-node.sh
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m bench

abi: $(STAMP)
	$(VENV)/bin/lib-mlx abi build --out build/abi

clean:
	rm -rf $(VENV) build .pytest_cache
