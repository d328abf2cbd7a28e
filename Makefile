PYTHON ?= python
PYTEST_WORKERS ?= 2

.PHONY: install test test-fast bench bench-quick lint format results clean

install:
	$(PYTHON) -m pip install -e ".[dev]"

# The test command the README names and CI runs.
test:
	$(PYTHON) -m pytest tests -n $(PYTEST_WORKERS) --dist loadfile -q

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
