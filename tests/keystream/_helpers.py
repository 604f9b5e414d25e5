"""Helpers of the keystream tests: the ledger slice of one test, what the tests
found, a reference copy of a file, uploaded versions, the SDK's view of a bucket.

Black-box on purpose: only the public Filesystem API, the CLI, the store and
the SDK, so the same tests run against today's cache and its rewrite.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests
from qcloud_cos import CosS3Client, CosServiceError
from qcloud_cos.cos_encryption_client import CosEncryptionClient
from qcloud_cos.crypto import AESCTRCipher, AESProvider

from cosencfs.crypto import ledger
from cosencfs.errors import PreconditionFailedError
from cosencfs.store.cos import CosStore
from tests.testlib import BUCKET, sdk_config

KEY_FIELD = "client-side-encryption-key"
IV_FIELD = "client-side-encryption-iv"
MIB = 1024 * 1024


# -- the keystream ledger, one test's part of it -------------------------------------


#: The ledger's record header (cosencfs/crypto/ledger.py): magic, key fingerprint,
#: first counter block, bytes skipped in it, plaintext length; then 4-byte digests.
_RECORD = struct.Struct(">2s8s16sBQ")
#: Above this many blocks in records that overlap others of their key, the
#: check looks at a window of WINDOW blocks of each such key only: the
#: ledger's check compares overlapping records block by block (quadratic),
#: which takes minutes when a cache rewrites in place under one key.
FULL_CHECK_BLOCKS = 200_000
WINDOW_BLOCKS = 64
SAMPLE_KEYS = 4
Rec = tuple[bytes, int, int, int, bytes]


def _span(skip: int, length: int) -> int:
    return -(-(skip + length) // ledger.BLOCK)


def _clip(rec: Rec, w0: int, w1: int) -> Rec | None:
    """The part of a record over counter blocks [w0, w1), as a record of its own."""
    fp, counter, skip, length, digests = rec
    n = _span(skip, length)
    lo, hi = max(counter, w0), min(counter + n, w1)
    if lo >= hi:
        return None
    i0, i1 = lo - counter, hi - counter

    def pos(i: int) -> int:  # plaintext offset where block i of the record starts
        return 0 if i == 0 else ledger.BLOCK - skip + (i - 1) * ledger.BLOCK

    end = length if i1 == n else pos(i1)
    return fp, lo, skip if i0 == 0 else 0, end - pos(i0), digests[i0 * 4 : i1 * 4]


def _overlapping(recs: list[Rec]) -> dict[bytes, list[Rec]]:
    """Per key, the records whose counter blocks overlap another record of that key."""
    by_key: dict[bytes, list[Rec]] = defaultdict(list)
    for r in recs:
        by_key[r[0]].append(r)
    out: dict[bytes, list[Rec]] = {}
    for fp, rs in by_key.items():
        rs.sort(key=lambda r: r[1])
        hit: set[int] = set()
        reach, last = -1, -1
        for i, r in enumerate(rs):
            if r[1] < reach:
                hit.update((i, last))
            end = r[1] + _span(r[2], r[3])
            if end > reach:
                reach, last = end, i
        if hit:
            out[fp] = [rs[i] for i in sorted(hit)]
    return out


class LedgerSlice:
    """The records the session ledger gained since this object was made.

    Every encryption of the test process and of every daemon it starts is
    appended to the one session file (one ``write`` each, O_APPEND), so the
    bytes after the size at the start are this test's.
    """

    def __init__(self, tmp: Path) -> None:
        self.path = Path(os.environ[ledger.ENV])
        self.start = self.path.stat().st_size if self.path.exists() else 0
        self.tmp = tmp
        self.checked = False

    def violations(self) -> list[str]:
        """Empty if no block was reused; else the totals and a few examples."""
        self.checked = True
        with open(self.path, "rb") as f:
            f.seek(self.start)
            data = f.read()
        part = self.tmp / "ledger-slice.bin"
        part.write_bytes(data)
        recs = ledger.read_records(part)
        over = _overlapping(recs)
        volume = sum(_span(r[2], r[3]) for rs in over.values() for r in rs)
        note = ""
        report = None
        if volume > FULL_CHECK_BLOCKS:
            sample = self.tmp / "ledger-sample.bin"
            with open(sample, "wb") as f:
                for rs in list(over.values())[:SAMPLE_KEYS]:
                    w0 = max(rs[0][1], rs[1][1])
                    for r in rs:
                        c = _clip(r, w0, w0 + WINDOW_BLOCKS)
                        if c is not None:
                            f.write(_RECORD.pack(b"KL", c[0], c[1].to_bytes(16, "big"), *c[2:4]))
                            f.write(c[4])
            report = ledger.check(sample)
            note = (
                f"{len(over)} keys of {len({r[0] for r in recs})} encrypted the same counter "
                f"blocks more than once ({volume} blocks); {WINDOW_BLOCKS} blocks of "
                f"{min(len(over), SAMPLE_KEYS)} of them checked:"
            )
        if report is None or not report.violations:
            report = ledger.check(part)
        if not report.violations:
            return []
        lines = str(report).splitlines()
        return [*([note] if note else []), lines[0], *lines[1:4]]


# -- what a test found ------------------------------------------------------------


@dataclass
class Findings:
    """Problems by kind; the test asserts there are none, naming all of them."""

    items: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, kind: str, what: str) -> None:
        self.items[kind].append(what)

    def extend(self, kind: str, what: list[str]) -> None:
        for w in what:
            self.add(kind, w)

    def __bool__(self) -> bool:
        return any(self.items.values())

    def report(self) -> str:
        lines = []
        for kind, what in self.items.items():
            if not what:
                continue
            lines.append(f"{kind}: {len(what)}")
            lines += [f"    {w}" for w in what[:8]]
            if len(what) > 8:
                lines.append(f"    ... and {len(what) - 8} more")
        return "\n".join(lines)

    def check(self) -> None:
        assert not self, "\n" + self.report()


# -- what the file must hold ----------------------------------------------------------


class Reference:
    """The bytes every acknowledged write left; bytes of failed writes are unknown."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)
        self.known = np.ones(len(data), dtype=np.bool_)

    def __len__(self) -> int:
        return len(self.data)

    def _grow(self, end: int) -> None:
        if end > len(self.data):
            extra = end - len(self.data)
            self.data += bytes(extra)
            self.known = np.concatenate([self.known, np.ones(extra, dtype=np.bool_)])

    def write(self, offset: int, data: bytes) -> None:
        self._grow(offset + len(data))
        self.data[offset : offset + len(data)] = data
        self.known[offset : offset + len(data)] = True

    def failed(self, offset: int, length: int) -> None:
        """A write that failed may or may not have landed."""
        self._grow(offset + length)
        self.known[offset : offset + length] = False

    def truncate(self, size: int) -> None:
        if size < len(self.data):
            del self.data[size:]
            self.known = self.known[:size]
        else:
            self._grow(size)

    def lost(self, actual: bytes) -> list[str]:
        """Ranges where ``actual`` differs from acknowledged writes."""
        out = []
        if len(actual) != len(self.data):
            out.append(f"size {len(actual)}, expected {len(self.data)}")
        n = min(len(actual), len(self.data))
        a = np.frombuffer(bytes(actual[:n]), dtype=np.uint8)
        b = np.frombuffer(bytes(self.data[:n]), dtype=np.uint8)
        bad = (a != b) & self.known[:n]
        idx = np.flatnonzero(bad)
        if len(idx):
            # runs of wrong bytes (random data agrees by chance now and then: gaps
            # under 64 bytes do not split a run)
            breaks = np.flatnonzero(np.diff(idx) > 64)
            starts = np.concatenate([[idx[0]], idx[breaks + 1]])
            ends = np.concatenate([idx[breaks], [idx[-1]]]) + 1
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                out.append(f"bytes {s}-{e} ({e - s}) differ from what write() acknowledged")
        return out


# -- uploaded versions ------------------------------------------------------------------


class Versions:
    """Every sampled object version: a data key and IV must never carry two bodies."""

    def __init__(self) -> None:
        self.bodies: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        self.samples = 0

    def record(self, key: str, meta: Mapping[str, str], body: bytes) -> None:
        self.samples += 1
        env = (key, meta.get(KEY_FIELD, ""), meta.get(IV_FIELD, ""))
        self.bodies[env].add(hashlib.sha256(body).hexdigest()[:16])

    def reused(self) -> list[str]:
        return [
            f"{k}: envelope {w[:12]}.../{iv[:8]}... uploaded with {len(b)} different bodies"
            for (k, w, iv), b in self.bodies.items()
            if len(b) > 1
        ]

    @property
    def envelopes(self) -> int:
        return len(self.bodies)


async def sample(
    store: CosStore, key: str, seen: set[str] | None = None
) -> tuple[dict[str, str], bytes] | None:
    """Metadata and body of the version in COS now (HEAD, then a GET that must
    match its ETag); None if its ETag is in ``seen`` (sampled before)."""
    while True:
        info = await store.head(key)
        if seen is not None:
            if info.etag in seen:
                return None
            seen.add(info.etag)
        try:
            body = await store.get(key, if_match=info.etag)
        except PreconditionFailedError:
            continue  # replaced in between: sample the newer one
        return dict(info.metadata), body


# -- the SDK's view of the bucket -------------------------------------------------------


class SdkBucket:
    """The bucket through cos-python-sdk-v5: raw objects, and the SDK's decryption."""

    def __init__(self, port: int, key_file: Path) -> None:
        conf = sdk_config(port, timeout=60)
        self._sessions = [requests.Session(), requests.Session()]
        self.raw_client = CosS3Client(conf, retry=1, session=self._sessions[0])
        provider = AESProvider(aes_key_path=str(key_file), cipher=AESCTRCipher())
        self.enc_client = CosEncryptionClient(conf, provider, retry=1, session=self._sessions[1])

    @staticmethod
    def _read(resp: dict[str, Any]) -> bytes:
        out = bytearray()
        while chunk := resp["Body"].read(MIB):
            out += chunk
        return bytes(out)

    def raw(self, key: str) -> tuple[dict[str, str], bytes]:
        """User metadata (without ``x-cos-meta-``) and the body as stored, from one GET."""
        resp = self.raw_client.get_object(Bucket=BUCKET, Key=key)
        return self._meta(resp), self._read(resp)

    def sample(self, key: str, seen: set[str]) -> tuple[dict[str, str], bytes] | None:
        """Like :meth:`raw` for a version whose ETag is not in ``seen`` (else None)."""
        while True:
            etag = self.raw_client.head_object(Bucket=BUCKET, Key=key)["ETag"]
            if etag in seen:
                return None
            try:
                resp = self.raw_client.get_object(Bucket=BUCKET, Key=key, IfMatch=etag)
            except CosServiceError as exc:
                if exc.get_status_code() == 412:
                    continue  # replaced in between: sample the newer one
                raise
            seen.add(etag)
            return self._meta(resp), self._read(resp)

    @staticmethod
    def _meta(resp: dict[str, Any]) -> dict[str, str]:
        prefix = "x-cos-meta-"
        return {k.lower()[len(prefix) :]: v for k, v in resp.items()
                if k.lower().startswith(prefix)}  # fmt: skip

    def decrypted(self, key: str) -> bytes:
        return self._read(self.enc_client.get_object(Bucket=BUCKET, Key=key))

    def close(self) -> None:
        for s in self._sessions:
            s.close()


# -- mounts ---------------------------------------------------------------------------


def mount_config(path: Path, **fs: object) -> list[str]:
    """A TOML file with ``[fs]`` settings (max_dirty_age has no command-line flag)."""
    lines = ["[fs]"]
    for name, value in fs.items():
        lines.append(f"{name} = {value!r}" if not isinstance(value, str) else f'{name} = "{value}"')
    path.write_text("\n".join(lines) + "\n")
    return ["--config", str(path)]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cosencfs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def snapshot_dir(root: Path) -> dict[str, bytes]:
    """The bytes of every regular file under ``root``, by relative path."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = p.read_bytes()
    return out
