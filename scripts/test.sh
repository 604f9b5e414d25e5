#!/usr/bin/env bash
# The whole check: lint, types, then the test suite. Fails on any failure,
# including pytest exit status 5 ("no tests collected").
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}/bin
status=0
echo "== ruff"; $VENV/ruff check cosencfs tests benchmarks || status=1
$VENV/ruff format --check cosencfs tests benchmarks || status=1
echo "== mypy"; $VENV/mypy || status=1
echo "== module size and docstrings"; $VENV/python scripts/check_modules.py cosencfs || status=1
# Mounts that were there before the run (another checkout's tests, a user's own
# mount) are not ours to judge or remove: only mounts this run created count.
before=$(grep -E ' fuse(\.[a-z0-9]+)? ' /proc/mounts | awk '{print $2}' | sort)
# Every test (and every benchmark a test starts) works under this run's own
# pytest base directory: a mount left there is this run's, and only those are
# removed below (another checkout's run, or a benchmark, may mount meanwhile).
base=$(mktemp -d "${TMPDIR:-/tmp}/cosencfs-test-XXXXXX")
echo "== pytest (base directory $base)"
$VENV/python -m pytest --basetemp="$base" "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "pytest collected no tests: failing"; rc=1; fi
[ $rc -ne 0 ] && status=$rc
# A test that crashed half-way must not leave a dead mount behind for the next run.
after=$(grep -E ' fuse(\.[a-z0-9]+)? ' /proc/mounts | awk '{print $2}' | sort)
for m in $(comm -13 <(echo "$before") <(echo "$after")); do
    case "$m" in
        "$base"/*) echo "stale mount left behind: $m"; fusermount3 -uz "$m" || true; status=1 ;;
        *) echo "note: a mount appeared during the run, not under $base (not ours): $m" ;;
    esac
done
# Kept when something failed, for its logs; removed (mounts detached above) otherwise.
[ $status -eq 0 ] && rm -rf "$base"
exit $status
