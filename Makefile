# The README's two commands: `make run` serves the gateway, `make test` runs the whole suite.
# `make lock` regenerates requirements.lock, the hashed pins the Docker image installs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench clean lock

# Quiet but not silent: one line says what takes the ~20 s. --quiet twice hides pip's warnings
# too, among them setuptools' "Editable installation" banner from building the editable wheel;
# errors still print.
$(STAMP): setup.cfg pyproject.toml
	@echo "metamcp: installing dependencies into $(VENV) (first run or changed setup.cfg, about 20 s)..."
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/gunicorn -c python:metamcp.gunicorn_conf

test: $(STAMP) lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check metamcp scripts tests wsgi.py
	$(BIN)/mypy

# requirements.lock: every runtime dependency of setup.cfg's install_requires and the build
# backend (setuptools), pinned with their hashes, resolved for the image's Python (3.11) from PyPI
# alone: a throwaway pip-tools venv, and no local pip configuration (find-links, constraints).
LOCK_VENV ?= /tmp/metamcp-piptools
lock:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "make lock: run it with Python 3.11, the image\x27s (PYTHON=python3.11)")'
	test -x $(LOCK_VENV)/bin/pip-compile || ($(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install --quiet pip-tools)
	env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile \
		--quiet --generate-hashes --strip-extras --all-build-deps --allow-unsafe \
		--index-url https://pypi.org/simple --no-emit-index-url \
		--output-file requirements.lock setup.cfg

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
