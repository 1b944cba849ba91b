# The README's commands live here so that the README, CI and people run the same thing.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN)/python)

.PHONY: setup java postgres demo test test-slow test-all lint ui clean
.PHONY: chromium screenshots

# One venv from pyproject.toml (torch 2.14.1 + torchvision 0.29.1, Spark, Prefect, MLflow, GX).
setup: java $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,team]'
	touch $@

# Spark needs Java 17+; installed with apt-get when missing (CI machines, fresh laptops with Debian/Ubuntu).
java:
	@if ! java -version >/dev/null 2>&1; then \
	  echo "Java not found: installing openjdk-17-jre-headless"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q openjdk-17-jre-headless; \
	fi

# The slow suite's PostgreSQL test starts a server of its own from Debian's binaries (no system service needed);
# installed with apt-get when missing, like Java.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then \
	  echo "PostgreSQL not found: installing postgresql"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
	fi

# The main job: the train-transsrgan flow on the embedded digits (local SQLite MLflow, Prefect's local API, Spark local[*]).
demo: setup
	$(BIN)/transsrgan train --preset demo

# The default test suite (under ~10 minutes on 2 cores).
test: setup
	$(BIN)/pytest -m "not slow" -q

# End-to-end and multi-process tests (minutes each).
test-slow: setup postgres chromium
	$(BIN)/pytest -m slow -q

test-all: test test-slow

lint: setup
	$(BIN)/ruff check flows tasks models spark_training tests tools

# MLflow UI on the embedded store: http://127.0.0.1:5000
ui: setup
	bash mlflow/start-server.sh --embedded

# Headless Chromium for `make screenshots` and its slow test; installed with apt-get when missing, like Java.
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  echo "Chromium not found: installing chromium"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	fi

# The pages users look at, checked in headless Chromium against real MLflow and Prefect servers (tiny flow):
# PNGs in docs/screenshots/; exit 1 naming a page that shows an error or lacks its expected text.
screenshots: setup chromium
	$(BIN)/python -m tools.screenshots

clean:
	rm -rf transsrgan-data spark-warehouse .pytest_cache
