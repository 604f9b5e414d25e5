#!/usr/bin/env bash
# The README's first command: mount a local bucket and show it working.
set -euo pipefail
cd "$(dirname "$0")/.."
COSENCFS=.venv/bin/cosencfs
DEMO=$PWD/demo
mkdir -p "$DEMO/mnt"
export XDG_CONFIG_HOME=$DEMO/config XDG_CACHE_HOME=$DEMO/cache
if grep -q " $DEMO/mnt " /proc/mounts; then $COSENCFS umount "$DEMO/mnt"; fi

echo "== mounting a local bucket kept in $DEMO/bucket at $DEMO/mnt"
$COSENCFS mount --local "$DEMO/bucket" "$DEMO/mnt"
cp /etc/os-release "$DEMO/mnt/hello.txt"
mkdir -p "$DEMO/mnt/photos/2026"
head -c 3000000 /dev/urandom > "$DEMO/mnt/photos/2026/random.bin"
ls -lR "$DEMO/mnt"
echo "== the file reads back through the mount:"
head -n 2 "$DEMO/mnt/hello.txt"
echo "== syncing and unmounting"
$COSENCFS umount "$DEMO/mnt"
echo "== in the bucket the body is ciphertext (SDK CosEncryptionClient format):"
.venv/bin/python - "$DEMO/bucket" <<'PY'
import sqlite3, sys, pathlib
root = pathlib.Path(sys.argv[1])
for db in root.rglob("*.sqlite"):
    con = sqlite3.connect(db)
    tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
    print("index", db.name, "tables:", ", ".join(tables))
PY
grep -c "ID=" "$DEMO/bucket" -r >/dev/null 2>&1 && echo "plaintext found?!" || echo "no plaintext of hello.txt in $DEMO/bucket"
echo "== mount it again with: $COSENCFS mount --local $DEMO/bucket $DEMO/mnt"
