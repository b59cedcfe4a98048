# The two set-up commands (README): `make run` and `make test`. Both create the venv on
# first use and reinstall when setup.cfg or pyproject.toml change.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/wasync run

# pytest exits 5 when it collected no test: make treats that as a failure, as it must.
test: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/python bench/store_ingest.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
