#!/usr/bin/env bash
# make lock: refresh requirements/*.txt to the newest releases that satisfy
# pyproject.toml and requirements/build.in, with hashes of every file.
# Run the whole suite afterwards (make test): the next bootstrap rebuilds the
# venv from the new lock.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=.venv-lock
[ -x "$TOOLS/bin/uv" ] || { python3 -m venv "$TOOLS"; "$TOOLS/bin/pip" install -q --disable-pip-version-check uv; }
"$TOOLS/bin/pip" install -q --disable-pip-version-check --upgrade uv
UV=("$TOOLS/bin/uv" pip compile --generate-hashes --python-version 3.11 --upgrade -q)
# One resolution for everything, then the build tools alone under it as a
# constraint, so both files agree on every version they share.
"${UV[@]}" requirements/build.in pyproject.toml --extra test --extra bench -o requirements/lock.txt
"${UV[@]}" requirements/build.in -c requirements/lock.txt -o requirements/build.txt
echo "lock refreshed:"; git --no-pager diff --stat -- requirements/ || true
