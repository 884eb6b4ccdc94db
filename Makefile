# The two entry points: `make demo` and `make test`. Both install what they need first.
VENV := .venv/bin
SRC := src/hypersdk

.PHONY: setup demo demo-raw test lint typecheck unit sdk-ts bench clean

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

sdk-ts: setup
	cd sdk/typescript && npm test

test: lint typecheck unit sdk-ts

# The bench alone needs restic and borg (bench_peers.py), so it installs them itself.
# Each bench records its ratios in BENCH_SUMMARY; the last line prints them all.
BENCH_SUMMARY := $(CURDIR)/.bench-summary.jsonl
bench: export HYPERSDK_BENCH_SUMMARY = $(BENCH_SUMMARY)
bench:
	@bash scripts/setup.sh --bench
	@$(VENV)/python bench/summary.py --reset $(BENCH_SUMMARY)
	$(VENV)/python bench/bench_repository.py
	$(VENV)/python bench/bench_restore_incremental.py
	$(VENV)/python bench/bench_qemu.py
	$(VENV)/python bench/bench_vsphere.py
	$(VENV)/python bench/bench_scale.py --huge
	$(VENV)/python bench/bench_audit.py
	$(VENV)/python bench/bench_serve.py
	$(VENV)/python bench/bench_restore.py
	$(VENV)/python bench/bench_s3.py
	$(VENV)/python bench/bench_crypto.py
	$(VENV)/python bench/bench_gc.py
	$(VENV)/python bench/bench_fleet.py
	$(VENV)/python bench/bench_peers.py
	$(VENV)/python bench/bench_libvirt.py
	@$(VENV)/python bench/summary.py $(BENCH_SUMMARY)

clean:
	rm -rf .bench-summary.jsonl .venv .mypy_cache .ruff_cache .pytest_cache .hypothesis sdk/typescript/node_modules sdk/typescript/dist sdk/typescript/dist-test lab/vcsim/bin
