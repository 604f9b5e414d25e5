# The two entry points of the README: `make demo` and `make test`.
.PHONY: setup demo test test-latest lock bench lint clean

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
	.venv/bin/python scripts/check_modules.py cosencfs

# The whole suite on the newest release of every dependency, in a venv of its
# own (not part of CI): a coming upstream break shows here before it lands.
test-latest:
	VENV=.venv-latest COSENCFS_LATEST=1 ./scripts/bootstrap.sh
	VENV=.venv-latest ./scripts/test.sh

# Refresh requirements/*.txt to the newest releases (then run make test).
lock:
	./scripts/lock.sh

bench: setup
	COSENCFS_EXTRA_PKGS="rclone s3fs" ./scripts/bootstrap.sh
	.venv/bin/python -m benchmarks.run

clean:
	rm -rf .venv .venv-latest .venv-lock build *.egg-info .mypy_cache .ruff_cache .pytest_cache demo
