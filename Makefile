# Two commands on a fresh machine with Python 3.10+:
#   make run    set up .venv and launch the app on the offline default
#   make test   set up .venv (with test tools and the llama.cpp extra) and run every test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: run test setup setup-dev bench clean

run: setup
	$(PY) app.py

test: setup-dev
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup-dev
	$(PY) bench/fanout.py
	$(PY) bench/browser_stream.py
	$(PY) bench/local_backends.py
	$(PY) bench/load.py

setup: $(VENV)/.runtime-ok
setup-dev: $(VENV)/.dev-ok

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Each stamp is newer than the files it installed, so a second run installs nothing.
$(VENV)/.runtime-ok: requirements.txt requirements-nodeps.txt | $(VENV)/bin/python
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -r requirements-nodeps.txt
	touch $@

$(VENV)/.dev-ok: $(VENV)/.runtime-ok requirements-dev.txt requirements-llamacpp.txt
	$(PIP) install -r requirements-dev.txt
	$(PIP) install -r requirements-llamacpp.txt
	touch $@

clean:
	rm -rf $(VENV)
