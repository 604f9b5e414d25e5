"""Two copies of the cache directory (or one and the bucket) must not give plaintext away.

cosencfs promises that a (data key, counter block) pair encrypts at most one
plaintext block, ever.  A cache rewritten in place under one key breaks it:
whoever copies the cache dir before and after an overwrite XORs the copies
and reads the data.  These tests play that attacker against a real mount.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cosencfs.crypto.ctr import DataKey, decrypt
from cosencfs.server import LocalCosServer
from tests.keystream._detect import BLOCK, Detector
from tests.keystream._helpers import (
    IV_FIELD,
    KEY_FIELD,
    Findings,
    LedgerSlice,
    SdkBucket,
    cli,
    mount_config,
    snapshot_dir,
)
from tests.testlib import MountFactory

#: Large enough for thousands of blocks, small enough for the quadratic search.
SECRET_SIZE = 64 * 1024
#: The file is truncated to this, then extended past its old end by one byte.
SHORT = 100


def xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def test_detector_finds_a_reused_keystream() -> None:
    """Not vacuous: the search finds S and S^P when one keystream encrypted S, 0 and P."""
    s, p = os.urandom(SECRET_SIZE), os.urandom(SECRET_SIZE)
    det = Detector({"S": s, "S^P": xor(s, p)})
    dk = DataKey.generate()
    # decrypt() is the same XOR as encrypt() and is not recorded by the ledger.
    blobs = {
        "before": os.urandom(48) + decrypt(dk, 0, s) + os.urandom(40),
        "zeros": os.urandom(4096) + decrypt(dk, 0, bytes(SECRET_SIZE)),
        "pattern": decrypt(dk, 0, p),
        "other key": decrypt(DataKey.generate(), 0, s),
    }
    found = det.xor(blobs)
    assert {leak.secret for leak in found} == {"S", "S^P"}
    pairs = {frozenset((leak.a, leak.b)) for leak in found}
    assert pairs <= {frozenset(("before", "zeros")), frozenset(("before", "pattern"))}
    # Within one blob, at another position, is looked at too.
    found = det.xor({"both": decrypt(dk, 0, s) + os.urandom(32) + decrypt(dk, 0, p)})
    assert {leak.secret for leak in found} == {"S^P"}
    assert {(leak.a, leak.a_pos % BLOCK) for leak in found} == {("both", 0)}
    # Fresh keys for each version: nothing to find.
    fresh = {f"v{i}": decrypt(DataKey.generate(), 0, d) for i, d in enumerate([s, p, bytes(99)])}
    assert det.xor(fresh) == []
    # Plaintext in clear, at an odd offset.
    found = det.plain({"clear": b"x" * 7 + s[1000:1100], **fresh})
    assert found
    assert all(leak.a == "clear" for leak in found)
    assert det.plain(fresh) == []


@pytest.mark.mount
def test_snapshots_of_the_cache_and_the_object_do_not_xor_to_plaintext(
    mounts: MountFactory,
    server: LocalCosServer,
    key_file: Path,
    tmp_path: Path,
    ledger_slice: LedgerSlice,
) -> None:
    # Nothing is uploaded before the sync below: every overwrite meets the
    # dirty, never-uploaded data of the one before in the cache.
    cfg = mount_config(tmp_path / "mount.toml", max_dirty_age=600.0)
    m = mounts(extra=[*cfg, "--writeback-delay", "60"])
    path = m.mountpoint / "secret.bin"
    s, p = os.urandom(SECRET_SIZE), os.urandom(SECRET_SIZE)
    snaps: dict[str, bytes] = {}

    def snap(label: str) -> None:
        for rel, data in snapshot_dir(m.cache_dir).items():
            snaps[f"{label}:{rel}"] = data

    with open(path, "wb") as new:
        new.write(s)
    snap("1-secret")
    with open(path, "r+b") as f:
        f.write(bytes(SECRET_SIZE))  # in place: same offsets
    snap("2-zeros")
    with open(path, "r+b") as f:
        f.write(p)
    snap("3-pattern")
    os.truncate(path, SHORT)
    with open(path, "r+b") as f:
        f.seek(SECRET_SIZE)
        f.write(b"\x01")
    snap("4-truncated-extended")

    done = cli("sync", "-q", str(m.mountpoint))
    assert done.returncode == 0, done.stderr + m.log()
    snap("5-synced")
    assert m.umount() == 0
    snap("6-unmounted")

    sdk = SdkBucket(server.port, key_file)
    try:
        meta, body = sdk.raw("secret.bin")
        plain = sdk.decrypted("secret.bin")
    finally:
        sdk.close()
    assert meta.get(KEY_FIELD), meta
    assert meta.get(IV_FIELD), meta
    snaps["cos:secret.bin"] = body
    want = p[:SHORT] + bytes(SECRET_SIZE - SHORT) + b"\x01"
    assert plain == want, "the SDK does not read back what was written"
    assert len(snaps) > 6, sorted(snaps)
    assert sum(len(b) for b in snaps.values()) >= 6 * SECRET_SIZE

    det = Detector({"S": s, "S^P": xor(s, p)})
    began = time.monotonic()
    findings = Findings()
    findings.extend("plaintext in clear", [str(leak) for leak in det.plain(snaps)])
    findings.extend("two ciphertexts XOR to plaintext", [str(x) for x in det.xor(snaps)])
    findings.extend("keystream ledger", ledger_slice.violations())
    took = time.monotonic() - began
    sizes = ", ".join(f"{k} {len(v)}" for k, v in sorted(snaps.items()))
    print(f"searched {len(snaps)} blobs in {took:.1f} s: {sizes}")
    findings.check()
