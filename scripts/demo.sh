#!/usr/bin/env bash
# The README's first command: mount a local bucket, use it with ordinary tools,
# unmount, and read what was written back with the COS SDK's own
# CosEncryptionClient — the objects are in the SDK's format.
set -euo pipefail
cd "$(dirname "$0")/.."
COSENCFS=$PWD/.venv/bin/cosencfs
PY=$PWD/.venv/bin/python
DEMO=$PWD/demo
mkdir -p "$DEMO/mnt"
export XDG_CONFIG_HOME=$DEMO/config XDG_CACHE_HOME=$DEMO/cache
if grep -q " $DEMO/mnt " /proc/mounts; then "$COSENCFS" umount "$DEMO/mnt"; fi

echo "== cosencfs mount --local $DEMO/bucket $DEMO/mnt"
"$COSENCFS" mount --local "$DEMO/bucket" "$DEMO/mnt"
echo "hello from cosencfs, $(date)" > "$DEMO/mnt/hello.txt"
mkdir -p "$DEMO/mnt/photos/2026"
head -c 3000000 /dev/urandom > "$DEMO/mnt/photos/2026/random.bin"
ln -sf photos/2026/random.bin "$DEMO/mnt/latest"
ls -lR "$DEMO/mnt"
cat "$DEMO/mnt/hello.txt"
"$COSENCFS" stats "$DEMO/mnt"

echo "== cosencfs umount (uploads everything, then unmounts)"
"$COSENCFS" umount "$DEMO/mnt"

echo "== reading hello.txt back with the COS SDK's CosEncryptionClient"
"$PY" - "$DEMO" <<'PY'
import subprocess, sys, re
from pathlib import Path

import requests
from qcloud_cos import CosConfig, CosS3Client
from qcloud_cos.cos_encryption_client import CosEncryptionClient
from qcloud_cos.crypto import AESCTRCipher, AESProvider

demo = Path(sys.argv[1])
server = subprocess.Popen(
    [sys.executable, "-m", "cosencfs", "local-server", "--root", str(demo / "bucket"),
     "--port", "0", "--bucket", "local-1250000000"],
    stdout=subprocess.PIPE, text=True,
)
try:
    port = int(re.search(r":(\d+)$", server.stdout.readline().strip()).group(1))
    conf = CosConfig(IP="127.0.0.1", Port=port, Region="ap-guangzhou", Scheme="http",
                     SecretId="demo", SecretKey="demo")
    session = requests.Session()
    key_file = demo / "config" / "cosencfs" / "local.key"
    sdk = CosEncryptionClient(conf, AESProvider(aes_key_path=str(key_file), cipher=AESCTRCipher()),
                              session=session)
    body = sdk.get_object(Bucket="local-1250000000", Key="hello.txt")["Body"].read(1 << 20)
    print("SDK, decrypted:  ", body.decode().strip())
    plain = CosS3Client(conf, session=session)
    raw = plain.get_object(Bucket="local-1250000000", Key="hello.txt")["Body"].read(1 << 20)
    print("stored in COS:   ", raw[:32].hex(), "... (ciphertext)")
    head = plain.head_object(Bucket="local-1250000000", Key="hello.txt")
    print("envelope:        ", {k: v for k, v in head.items() if "encryption" in k})
    session.close()
finally:
    server.terminate()
    server.wait()
PY
echo "== mount it again: $COSENCFS mount --local $DEMO/bucket $DEMO/mnt"
