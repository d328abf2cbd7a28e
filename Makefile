PYTHON ?= python
PYTEST_WORKERS ?= 2
# Extra pytest arguments, e.g. PYTEST_ARGS="-p randomly" for a shuffled order.
PYTEST_ARGS ?=

.PHONY: install test test-shuffled sweep known-good test-fast bench bench-quick lint format results clean

install:
	$(PYTHON) -m pip install -e ".[dev]"

# The test command the README names and CI runs. The seed is drawn per run and printed;
# replay one with MUSE_FAST_TEST_SEED=<seed> make test.
test:
	$(PYTHON) -m pytest tests -n $(PYTEST_WORKERS) --dist loadfile -q $(PYTEST_ARGS)

# Shuffled order (pytest-randomly; the order follows MUSE_FAST_TEST_SEED too).
test-shuffled:
	$(PYTHON) -m pytest tests -n $(PYTEST_WORKERS) --dist loadfile -q -p randomly $(PYTEST_ARGS)

# N fresh seeds in a row (default 5); failing seeds' logs stay in runs/seed_sweep/.
sweep:
	bash scripts/seed_sweep.sh $(or $(N),5)

# After a passing `bash .ci/run`: its venv's versions become CI's known-good constraints.
known-good:
	$(PYTHON) .ci/deps.py record .ci-venv/passed-freeze.txt .ci/known-good.txt

bench:
	$(PYTHON) -m pytest benchmarks --benchmark -q -p no:randomly

bench-quick:
	$(PYTHON) -m pytest benchmarks --benchmark --benchmark-quick -q

results:
	$(PYTHON) benchmarks/render.py

lint:
	ruff check . && ruff format --check .
	clang-format --dry-run --Werror csrc/*.cpp csrc/*.h

format:
	ruff format . && ruff check --fix .
	clang-format -i csrc/*.cpp csrc/*.h

clean:
	rm -rf build *.egg-info muse_fast/_C*.so .pytest_cache .ruff_cache

# One-command GPU check (one H100/H200, no network): install, build, tests on CUDA, benchmarks,
# the Myna vit-s batch-4096 step and the max-batch search, each time-boxed, into one folder
# (benchmarks/results/<device>/gpu-check/). DRY_RUN=1 proves every stage starts on a CPU.
.PHONY: gpu-check
gpu-check:
	DRY_RUN=$(DRY_RUN) PYTHON=$(PYTHON) bash scripts/gpu_check.sh
