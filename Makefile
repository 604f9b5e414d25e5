# The two entry points of the README: `make demo` and `make test`.
.PHONY: setup demo test bench bench-smoke lint clean

setup:
	./scripts/bootstrap.sh

demo: setup
	./scripts/demo.sh

test: setup
	./scripts/test.sh

lint: setup
	.venv/bin/ruff check cosencfs tests benchmarks
	.venv/bin/ruff format --check cosencfs tests benchmarks
	.venv/bin/mypy

bench: setup
	COSENCFS_EXTRA_PKGS="rclone s3fs" ./scripts/bootstrap.sh
	.venv/bin/python -m pip install -q -e ".[test,bench]"
	.venv/bin/python -m benchmarks.run

clean:
	rm -rf .venv build *.egg-info .mypy_cache .ruff_cache .pytest_cache demo
