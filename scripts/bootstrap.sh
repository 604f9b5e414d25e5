#!/usr/bin/env bash
# Sets up everything cosencfs needs on a fresh Debian/Ubuntu machine: system
# packages (only those missing), a virtualenv, and in it exactly the versions
# of requirements/lock.txt, checked against their hashes, then the package in
# editable mode.  Safe to run again; a changed lock rebuilds the venv.
#
#   VENV=DIR           the virtualenv (default .venv)
#   COSENCFS_LATEST=1  ignore the lock: the newest release of everything
#                      (make test-latest), to see a coming break early
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(fuse3 libfuse3-dev pkg-config rsync sqlite3 git systemd)
EXTRA_PKGS=${COSENCFS_EXTRA_PKGS:-}
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
# A fresh machine may still be running apt at boot (unattended upgrades, a
# provisioning step): wait for its lock instead of failing at once.
APT=(apt-get -o DPkg::Lock::Timeout=600)
missing=()
for p in "${PKGS[@]}" $EXTRA_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing system packages: ${missing[*]}"
    $SUDO "${APT[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO "${APT[@]}" install -y -qq "${missing[@]}" >/dev/null
fi
# promtool (tests/alerts checks contrib/prometheus) ships only in Debian's
# prometheus server package (about 100 MB installed). Without its recommended
# node exporter; and the server it enables is stopped and disabled again when
# this script installed it: nothing here needs it listening on :9090.
if ! command -v promtool >/dev/null; then
    echo "installing system packages: prometheus (for promtool)"
    $SUDO "${APT[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO "${APT[@]}" install -y -qq --no-install-recommends \
        prometheus >/dev/null
    if [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
fi

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
LOCK=requirements/lock.txt
BUILD=requirements/build.txt
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

make_venv() {
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
        $SUDO "${APT[@]}" install -y -qq python3-venv >/dev/null
        "$PY" -m venv "$VENV"
    fi
}

if [ "${COSENCFS_LATEST:-0}" = 1 ]; then
    [ -x "$VENV/bin/python" ] || make_venv
    "${PIP[@]}" install -q --upgrade pip setuptools setuptools_scm wheel Cython
    "${PIP[@]}" install -q --upgrade --upgrade-strategy eager --no-build-isolation -e '.[test,bench]'
    "${PIP[@]}" freeze --all --exclude-editable > "$VENV/versions.txt"
    echo "newest releases installed in $VENV (list: $VENV/versions.txt)"
    exit 0
fi

# The stamp holds the hash of the lock the venv was built from: a different
# lock (a refresh, a checkout of another commit) means a new venv, so nothing
# installed for an older lock lingers.
want=$(cat "$BUILD" "$LOCK" | sha256sum | cut -d' ' -f1)
stamp=$VENV/.cosencfs-lock
if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "$LOCK changed since $VENV was made: rebuilding it"
    rm -rf "$VENV"
fi
if [ ! -f "$stamp" ]; then
    rm -rf "$VENV"
    make_venv
    # First pip and the build tools, so the sdists below build with the locked
    # versions (no build isolation: it would fetch the newest, unlocked ones).
    "${PIP[@]}" install -q --require-hashes --no-deps -r "$BUILD"
    "${PIP[@]}" install -q --require-hashes --no-deps --no-build-isolation -r "$LOCK"
    "${PIP[@]}" install -q --no-deps --no-build-isolation -e .
    echo "$want" > "$stamp"
    touch "$VENV/.cosencfs-editable"
elif [ pyproject.toml -nt "$VENV/.cosencfs-editable" ]; then
    # Entry points or package data changed; the dependencies are the lock's.
    "${PIP[@]}" install -q --no-deps --no-build-isolation -e .
    touch "$VENV/.cosencfs-editable"
fi
"$VENV/bin/python" scripts/check_lock.py "$LOCK"
