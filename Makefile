# Two commands do all setup: `make run` and `make test`. Everything they need is installed here.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
WEB_PORT ?= 8000
# Most tests wait on sockets, not the CPU: three workers finish the suite in about half the time
# even on two cores. `make test PYTEST_WORKERS=0` runs it in one process.
PYTEST_WORKERS ?= 3

.PHONY: run test install chromium lint fmt bench soak clean

install: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

node_modules/.installed: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

# Browser tests drive Debian's Chromium (Playwright's own browser download cannot work offline).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

run: install
	$(PY) manage.py migrate --no-input
	$(PY) manage.py ensure_demo_user
	PATH="$(abspath $(VENV))/bin:$$PATH" DEBUG=$${DEBUG:-true} WEB_PORT=$(WEB_PORT) \
	  honcho -f Procfile.dev start

test: install chromium
	$(PY) manage.py collectstatic --no-input --verbosity 0
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy conversations chatsite
# Models and migrations agree (a model change without its migration fails here).
	$(PY) manage.py makemigrations --check --dry-run

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install chromium
	$(PY) -m bench

clean:
	rm -rf $(VENV) node_modules staticfiles db.sqlite3

soak: install chromium
	$(PY) -m soak
