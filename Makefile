# Two commands set everything up: `make demo` and `make test`. Both create .venv when needed and are idempotent.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# Meltano runs the plugins' executables from the project's own environment, so its bin must be on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: install demo test lint typecheck clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	# Compile bytecode at install: with PYTHONDONTWRITEBYTECODE set (as on some machines) every tap, target and cdp
	# process would otherwise recompile its imports, about a second each.
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev]'
	# Where a proxy strips the HTTP caching headers, uv cannot revalidate the pyspark source archive: it downloads and
	# builds it again at every install and keeps every build (1.4 GB each). Pruning drops the builds nothing reaches.
	$(BIN)/uv cache prune --quiet
	touch $@

demo: install
	$(BIN)/cdp demo

# Worker processes (pytest-xdist); the tests on the shared SparkSession are grouped by module, and units of work go out
# in collection order (tests/conftest.py: the longest first). TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 3

test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy plugins taps targets transforms loaders activators schema_registry

clean:
	rm -rf $(VENV) data .meltano/run .meltano/logs .pytest_cache .mypy_cache .ruff_cache
