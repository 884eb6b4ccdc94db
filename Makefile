# The two entry points: `make demo` and `make test`. Both install what they need first.
VENV := .venv/bin
SRC := src/hypersdk

.PHONY: setup demo demo-raw test lint typecheck unit bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/python demo/run_demo.py

demo-raw: setup
	$(VENV)/python demo/raw_image_demo.py

lint: setup
	$(VENV)/ruff check src tests bench demo
	$(VENV)/ruff format --check src tests bench demo

typecheck: setup
	$(VENV)/mypy

unit: setup
	$(VENV)/pytest -q

test: lint typecheck unit

bench: setup
	$(VENV)/python bench/bench_repository.py

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache .hypothesis
