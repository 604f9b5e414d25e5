"""The keystream ledger catches a reused (key, counter block), and only the CTR module encrypts."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

import cosencfs
from cosencfs.crypto import ctr, ledger
from cosencfs.crypto.ctr import DataKey, encrypt, open_record, seal_record


@pytest.fixture
def private_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ledger of this test's own, so deliberate repeats stay out of the session's."""
    path = tmp_path / "ledger.bin"
    monkeypatch.setattr(ctr, "_LEDGER", ledger.Ledger(str(path)))
    return path


def test_session_ledger_is_on() -> None:
    # Every test run records: a ledger that is off proves nothing.
    assert os.environ.get(ledger.ENV)
    assert ctr._LEDGER is not None


def test_a_repeated_counter_with_other_plaintext_is_caught(private_ledger: Path) -> None:
    dk = DataKey.generate()
    encrypt(dk, 4096, b"A" * 100)
    encrypt(dk, 4096 + 32, b"B" * 16)  # block 2 of the first write, other bytes
    report = ledger.check(private_ledger)
    assert report.records == 2
    assert len(report.violations) == 1
    assert report.violations[0].counter == int.from_bytes(ctr.counter_block(dk.iv, 4128), "big")


def test_the_same_plaintext_again_is_allowed(private_ledger: Path) -> None:
    dk = DataKey.generate()
    data = os.urandom(5000)
    encrypt(dk, 7, data)
    encrypt(dk, 7, data)  # a retry after a crash re-encrypts identical bytes
    encrypt(dk, 7 + 1001, data[1001 : 1001 + 992])  # whole blocks of it, again
    report = ledger.check(private_ledger)
    assert report.violations == []
    assert report.blocks == 2 * 313 + 62
    # A sub-range whose edges cut blocks differently cannot be compared by
    # digest: the ledger counts it as a reuse (cosencfs never does that).
    encrypt(dk, 7 + 1000, data[1000:1100])
    assert ledger.check(private_ledger).violations


def test_partial_blocks(private_ledger: Path) -> None:
    dk = DataKey.generate()
    encrypt(dk, 0, b"x" * 8)
    encrypt(dk, 8, b"y" * 8)  # other keystream bytes of the same block: allowed
    assert ledger.check(private_ledger).violations == []
    encrypt(dk, 4, b"x" * 4 + b"z" * 4)  # overlaps both with other bytes
    assert len(ledger.check(private_ledger).violations) == 2


def test_keys_are_told_apart(private_ledger: Path) -> None:
    a, b = DataKey.generate(), DataKey.generate()
    b = DataKey(b.key, a.iv)  # same counters, another key: no reuse
    encrypt(a, 0, b"1" * 64)
    encrypt(b, 0, b"2" * 64)
    report = ledger.check(private_ledger)
    assert report.keys == 2
    assert report.violations == []


def test_gcm_records_use_fresh_counters(private_ledger: Path) -> None:
    key = os.urandom(32)
    for _ in range(50):
        rec = seal_record(key, b"same page" * 400, b"aad")
        assert open_record(key, rec, b"aad") == b"same page" * 400
    report = ledger.check(private_ledger)
    assert report.records == 50
    assert report.violations == []


def test_a_reused_gcm_nonce_is_caught(
    private_ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = os.urandom(32)
    monkeypatch.setattr(os, "urandom", bytes)  # a broken nonce source
    seal_record(key, b"first", b"")
    seal_record(key, b"other", b"")
    assert len(ledger.check(private_ledger).violations) == 1


def test_record_tag_detects_tampering() -> None:
    key = os.urandom(32)
    rec = bytearray(seal_record(key, b"data" * 10, b"ctx"))
    with pytest.raises(ctr.RecordTagError):
        open_record(key, rec, b"other ctx")
    rec[20] ^= 1
    with pytest.raises(ctr.RecordTagError):
        open_record(key, rec, b"ctx")


#: Names that build a keystream (or an AEAD made of one).
_KEYSTREAM_NAMES = {
    "CTR",
    "GCM",
    "OFB",
    "CFB",
    "CFB8",
    "Cipher",
    "AESGCM",
    "AESGCMSIV",
    "AESCCM",
    "AESOCB3",
    "AESSIV",
    "ChaCha20",
    "ChaCha20Poly1305",
}


def test_only_the_ctr_module_builds_keystream_ciphers() -> None:
    root = Path(cosencfs.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "crypto" / "ctr.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif isinstance(node, ast.Name):
                name = node.id
            elif isinstance(node, ast.alias):
                name = node.name.rsplit(".", 1)[-1]
            if name in _KEYSTREAM_NAMES:
                offenders.append(f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')} {name}")
    assert offenders == []


def test_encrypt_into_is_recorded_and_matches_encrypt(private_ledger: Path) -> None:
    """``encrypt_into`` (a streamed part's buffer, cosencfs/fs/partjob.py) gives
    ``encrypt``'s bytes and is on the ledger like it."""
    dk = DataKey.generate()
    plain = os.urandom(1000)
    out = bytearray(1003)
    ctr.encrypt_into(dk, 4100, plain, memoryview(out)[3:])
    assert bytes(out[3:]) == encrypt(dk, 4100, plain)  # same bytes again: allowed
    assert ledger.check(private_ledger).violations == []
    ctr.encrypt_into(dk, 4100 + 28, b"C" * 16, memoryview(bytearray(16)))
    assert len(ledger.check(private_ledger).violations) >= 1
    with pytest.raises(ValueError, match="output of"):
        ctr.encrypt_into(dk, 0, plain, memoryview(out))
