# Two commands on a fresh machine: `make demo` and `make test`. Each does its own set-up.
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= demo-out

.PHONY: setup demo test test-fast bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/compress build --recipe deploy/recipes/demo.yaml --out $(OUT) --force

test: setup
	$(PY) -m pytest -q -rs --durations=30 -m "not gpu" -p no:cacheprovider

test-fast: setup
	$(PY) -m pytest -q -rs -m "not slow and not gpu" -p no:cacheprovider

bench: setup
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(OUT) .pytest_cache
