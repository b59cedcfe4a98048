# The two set-up commands (README): `make run` and `make test`. Both create the venv on
# first use and reinstall when setup.cfg or pyproject.toml change.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test bench clean test-deps

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

# NEONIZE_BOT_TAG=off: neonize's Go library reads it only from the starting environment
# (wasync run also re-executes itself once to make sure of it). `exec`: the daemon is
# make's own child, so the SIGTERM make forwards to its children reaches it and it drains
# (without it the shell got the signal and the daemon ran on).
run: $(STAMP)
	exec env NEONIZE_BOT_TAG=off $(VENV)/bin/wasync run

# pytest exits 5 when it collected no test: make treats that as a failure, as it must.
test: $(STAMP) test-deps
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The neonize session-store tests start a throwaway PostgreSQL cluster, the admin page
# is tested in Debian's Chromium and the alert rules with promtool (Debian's prometheus),
# all installed when missing; the gcloud Firestore emulator is on the machine image already.
test-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v chromium >/dev/null \
	  && command -v promtool >/dev/null || { \
	  echo "installing PostgreSQL, Chromium and promtool for the tests (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    postgresql chromium prometheus; }

bench: $(STAMP)
	$(VENV)/bin/python bench/store_ingest.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
