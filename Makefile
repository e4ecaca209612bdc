# The two entry points of a fresh checkout; each sets up .venv on first use (see tools/install_env.sh).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.expedite-install-stamp

.PHONY: main test install

# The main job: evaluate the built-in models with token reduction off and on, compare.
main: install
	$(PYTHON) tools/main_job.py

# The test suite.
test: install
	$(PYTHON) -m pytest -q

install:
	@bash tools/install_env.sh $(VENV)
