"""Extended attributes sealed with AES-GCM (docs/format.md, section 13)."""

from __future__ import annotations

import os

import pytest

from cosencfs.crypto.aeskey import AesMasterKey
from cosencfs.crypto.integrity import TagKey, b64url_decode, b64url_encode
from cosencfs.crypto.xattrseal import NONCE_SIZE, XattrKey, open_any, sealed_length
from cosencfs.errors import IntegrityError

XS = {b"user.a": b"1", b"user.empty": b"", b"user.bin": bytes(range(256))}


def _key() -> XattrKey:
    return XattrKey(TagKey(os.urandom(32)))


def test_round_trip_and_length() -> None:
    xk = _key()
    text = xk.seal("dir/f", XS)
    assert xk.open("dir/f", text) == XS
    assert len(text) == sealed_length(XS)
    assert xk.open("k", xk.seal("k", {})) == {}


def test_every_bit_flip_fails() -> None:
    xk = _key()
    raw = bytearray(b64url_decode(xk.seal("f", {b"user.a": b"secret"})) or b"")
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        with pytest.raises(IntegrityError):
            xk.open("f", b64url_encode(bytes(bad)))
    with pytest.raises(IntegrityError):
        xk.open("f", "not base64 !")
    with pytest.raises(IntegrityError):
        xk.open("f", b64url_encode(bytes(raw[:20])))


def test_swapped_between_objects_fails() -> None:
    xk = _key()
    text = xk.seal("a", XS)
    for other in ("b", "a/", "A", "a\x00"):
        with pytest.raises(IntegrityError):
            xk.open(other, text)


def test_wrong_key_fails_and_open_any_finds_the_right_one() -> None:
    a, b = _key(), _key()
    text = a.seal("f", XS)
    with pytest.raises(IntegrityError):
        b.open("f", text)
    assert open_any([b, a], "f", text) == XS
    with pytest.raises(IntegrityError):
        open_any([b], "f", text)
    with pytest.raises(IntegrityError):
        open_any([], "f", text)


def test_key_comes_from_the_master_only_and_is_domain_separated() -> None:
    m = AesMasterKey(bytes(range(32)))
    tk = TagKey.from_master(m)
    # Same master -> same key (a remount opens what it sealed).
    assert XattrKey(TagKey.from_master(m)).open("f", XattrKey(tk).seal("f", XS)) == XS
    other = XattrKey(TagKey.from_master(AesMasterKey(bytes(32))))
    with pytest.raises(IntegrityError):
        other.open("f", XattrKey(tk).seal("f", XS))
    assert "secret" in repr(XattrKey(tk))
    assert str(bytes(range(32))) not in repr(XattrKey(tk))


def test_nonces_are_fresh_per_seal() -> None:
    xk = _key()
    nonces = set()
    texts = set()
    for _ in range(2000):
        text = xk.seal("f", XS)
        raw = b64url_decode(text) or b""
        nonces.add(raw[1 : 1 + NONCE_SIZE])
        texts.add(text)
    assert len(nonces) == 2000
    assert len(texts) == 2000
