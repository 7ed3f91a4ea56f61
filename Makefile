# Two commands on a fresh machine: `make demo` and `make test`. Each does its own set-up.
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= demo-out

.PHONY: setup demo test test-fast bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/compress build --recipe deploy/recipes/demo.yaml --out $(OUT) --force

PYTEST := $(PY) -m pytest -q -rs -p no:cacheprovider
WORKERS ?= 2
# Two passes. Most tests run on $(WORKERS) pytest-xdist workers, a whole file per worker at a time (so a
# module's shared fixtures are built once), each worker pinned to its own CPUs (tests/conftest.py); then
# the tests marked `serial` (timing comparisons, installs into the venv) run alone on an otherwise quiet
# machine. Both passes always run; either failing fails.
test: setup
	@rc=0; \
	$(PYTEST) --durations=30 -n $(WORKERS) --dist loadfile -m "not gpu and not serial" || rc=$$?; \
	$(PYTEST) --durations=10 -m "serial and not gpu" || rc=$$?; \
	exit $$rc

test-fast: setup
	$(PYTEST) -n $(WORKERS) --dist loadfile -m "not slow and not gpu"

bench: setup
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(OUT) .pytest_cache
