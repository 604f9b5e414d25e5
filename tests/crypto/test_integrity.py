"""Integrity tags (cosencfs.crypto.integrity; docs/format.md, section 12).

Known-answer vectors pin the format; a from-scratch reference built from the
document's byte layout checks that the document and the code agree; every
tamper class of issue 14 is shown to fail verification.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import os
import random
import struct

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from cosencfs.crypto import (
    AesMasterKey,
    DataKey,
    EnvelopeCodec,
    MasterKey,
    RsaMasterKey,
    encrypt,
)
from cosencfs.crypto import integrity as I
from cosencfs.crypto.envelope import (
    IV_FIELD,
    KCV_FIELD,
    KEY_FIELD,
    KID_FIELD,
    VERSION_FIELD,
    WRAP_FIELD,
)
from cosencfs.crypto.objecttags import sealed_envelope
from cosencfs.crypto.wrapping import WrapAlg
from cosencfs.errors import CryptoError, DamagedEnvelopeError, IntegrityError
from tests.crypto._crypto_helpers import RsaPair

C = I.CHUNK_SIZE
RAW = bytes(range(32))
KAT_DK = DataKey(bytes(range(32)), bytes(range(100, 116)))
KAT_KEY = "photos/2024/cat.jpg"
KAT_ATTRS = I.AttrSet(0o100644, 1000, 100, 1_700_000_000_123_456_789, None, {"user.comment": b"hi"})


def kat_body() -> bytes:
    return bytes((i * 7 + 3) % 251 for i in range(C + 1000))


def attrs_fields(a: I.AttrSet) -> dict[str, str]:
    sec, ns = divmod(a.mtime_ns, 10**9)
    return {
        "mode": str(a.mode),
        "uid": str(a.uid),
        "gid": str(a.gid),
        "mtime": f"{sec}.{ns:09d}" if ns else str(sec),
        "cosencfs-size": "0",
    }


@dataclasses.dataclass
class Obj:
    """One tagged object as it would sit in the bucket."""

    key: str
    dk: DataKey
    body: bytes
    metadata: dict[str, str]
    companion: bytes | None
    attrs: I.AttrSet

    def open(self, tk: I.TagKey) -> I.VerifiedContent:
        return I.open_tags(
            tk, key=self.key, size=len(self.body), metadata=self.metadata, companion=self.companion
        )


def make_obj(
    master: MasterKey,
    key: str,
    size: int,
    *,
    attrs: I.AttrSet = KAT_ATTRS,
    seed: int = 0,
) -> Obj:
    dk = DataKey.generate()
    plain = random.Random(seed).randbytes(size)
    body = encrypt(dk, 0, plain)
    meta = {**EnvelopeCodec(master).seal(dk), **attrs_fields(attrs)}
    meta["cosencfs-size"] = str(size)
    tags = I.tag_body(I.ChunkKey(dk), body)
    sealed = I.seal_tags(
        I.TagKey.from_master(master),
        key=key,
        size=size,
        metadata=meta,
        chunk_tags=tags,
        attrs=attrs,
    )
    return Obj(key, dk, body, {**meta, **sealed.fields}, sealed.companion, attrs)


@pytest.fixture(scope="module")
def aes() -> AesMasterKey:
    return AesMasterKey(RAW)


@pytest.fixture(scope="module")
def tk(aes: AesMasterKey) -> I.TagKey:
    return I.TagKey.from_master(aes)


@pytest.fixture(scope="module")
def small(aes: AesMasterKey) -> Obj:
    """Inline tags: 3 chunks, the last short."""
    return make_obj(aes, "dir/small.bin", 2 * C + 777, seed=1)


@pytest.fixture(scope="module")
def large(aes: AesMasterKey) -> Obj:
    """Companion tags: 40 chunks."""
    return make_obj(aes, "dir/large.bin", 40 * C - 5, seed=2)


# --------------------------------------------------------------------------
# Known answers (computed once; a change here is a format change)


KAT = {
    "aes_tag_key": "eb3ce594bfaf521fcbcaabb3bea7f31f7a48755c49d67f8009dfbca1aac0d0f7",
    "rsa_tag_key": "b34d2350392e5b0d025fc537b83604e344fc764c46ccc98f1deb4d67d670f8a3",
    "chunk_tags": ["6cfbf0ed9a80904128b7ed14b0ac39e1", "369ea81b73eee2709522af72e85f5215"],
    "digest": "06963a3327854bea241120ba40535058ca0dc4aee1c5b149b8383eff5e154c7a",
    "empty_digest": "f2d33f58684c139ffa3d47dbd2c5873f27497fbf77b98c16d95ddc31a03c7540",
    "object_tag": "2147fdc6501cf291c2ceb34a3f67ec88",
    "attr_encoding": "000081a4000003e800000064000000006553f100075bcd15000000000000000000000000"
    "010000000c757365722e636f6d6d656e74000000026869",
    "attr_tag": "2823c741335996c30a29820ca01398a8",
    "companion_header": "4345465401000000000100000000000000000002",
}


def test_kat_tag_keys(rsa_a: RsaPair) -> None:
    assert AesMasterKey(RAW).integrity_key().hex() == KAT["aes_tag_key"]
    assert RsaMasterKey(rsa_a.private).integrity_key().hex() == KAT["rsa_tag_key"]


def test_kat_chunk_object_attribute_tags() -> None:
    master = AesMasterKey(RAW)
    body = kat_body()
    tags = I.tag_body(I.ChunkKey(KAT_DK), body)
    assert [t.hex() for t in tags] == KAT["chunk_tags"]
    assert tags.digest().hex() == KAT["digest"]
    assert tags.companion_body()[:20].hex() == KAT["companion_header"]
    assert I.ChunkTags([]).digest().hex() == KAT["empty_digest"]
    env = sealed_envelope(EnvelopeCodec(master).seal(KAT_DK))
    tk = I.TagKey.from_master(master)
    otag = I.object_tag(tk, key=KAT_KEY, size=len(body), envelope=env, chunk_tags=tags)
    assert otag.hex() == KAT["object_tag"]
    assert KAT_ATTRS.encode().hex() == KAT["attr_encoding"]
    atag = I.attribute_tag(tk, key=KAT_KEY, object_tag=otag, attrs=KAT_ATTRS)
    assert atag.hex() == KAT["attr_tag"]


# A reference written from docs/format.md section 12 alone (hashlib/hmac, no
# code shared with the module): the document and the code say the same.


def _lp(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def _ref_mac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()[:16]


def test_reference_implementation_of_the_document() -> None:
    master = AesMasterKey(RAW)
    k = HKDF(hashes.SHA256(), 32, salt=None, info=b"cosencfs integrity key v1\x00aes").derive(RAW)
    assert k == master.integrity_key()
    kc = HKDF(hashes.SHA256(), 32, salt=KAT_DK.iv, info=b"cosencfs chunk key v1").derive(KAT_DK.key)
    body = kat_body()
    tags = []
    for i in range(0, len(body), C):
        ct = body[i : i + C]
        msg = b"\x01" + _lp(b"cosencfs chunk tag") + struct.pack(">Q", i // C) + ct
        tags.append(_ref_mac(kc, msg + struct.pack(">I", len(ct))))
    assert [t.hex() for t in tags] == KAT["chunk_tags"]
    companion = b"CEFT\x01\x00\x00\x00" + struct.pack(">IQ", C, len(tags)) + b"".join(tags)
    digest = hashlib.sha256(companion).digest()
    meta = EnvelopeCodec(master).seal(KAT_DK)
    import base64

    envelope = b"".join(
        _lp(x)
        for x in (
            b"aes-256-ctr",
            b"1",
            b"aes-ctr",
            meta[KID_FIELD].encode(),
            base64.b64decode(meta[KEY_FIELD]),
            base64.b64decode(meta[IV_FIELD]),
            base64.b64decode(meta[KCV_FIELD]),
        )
    )
    msg = (
        b"\x01"
        + _lp(b"cosencfs object tag")
        + _lp(KAT_KEY.encode())
        + struct.pack(">QI", len(body), C)
        + envelope
        + _lp(digest)
    )
    otag = _ref_mac(k, msg)
    assert otag.hex() == KAT["object_tag"]
    attrs = struct.pack(">IIIqIBQI", 0o100644, 1000, 100, 1_700_000_000, 123_456_789, 0, 0, 1)
    attrs += _lp(b"user.comment") + _lp(b"hi")
    msg = b"\x01" + _lp(b"cosencfs attribute tag") + _lp(KAT_KEY.encode()) + _lp(otag) + attrs
    assert _ref_mac(k, msg).hex() == KAT["attr_tag"]


# --------------------------------------------------------------------------
# Tag keys


def test_tag_key_independent_of_aes_wrap() -> None:
    sdk = AesMasterKey(RAW, hardened=False)
    kw = AesMasterKey(RAW, hardened=True)
    assert sdk.wrap_alg is WrapAlg.SDK_AES_CTR
    assert kw.wrap_alg is WrapAlg.AES_KW
    assert sdk.integrity_key() == kw.integrity_key()


def test_different_master_keys_give_different_tag_keys(rsa_a: RsaPair, rsa_b: RsaPair) -> None:
    keys = [
        AesMasterKey(RAW).integrity_key(),
        AesMasterKey(bytes(range(1, 33))).integrity_key(),
        AesMasterKey(RAW[:16]).integrity_key(),
        RsaMasterKey(rsa_a.private).integrity_key(),
        RsaMasterKey(rsa_b.private).integrity_key(),
    ]
    assert len(set(keys)) == len(keys)
    assert all(len(k) == 32 for k in keys)


def test_public_only_rsa_key_cannot_make_a_tag_key(rsa_a: RsaPair) -> None:
    public_only = RsaMasterKey(None, rsa_a.private.public_key())
    with pytest.raises(CryptoError, match="private key") as exc:
        public_only.integrity_key()
    assert not isinstance(exc.value, IntegrityError)
    with pytest.raises(CryptoError):
        I.TagKey.from_master(public_only)


def test_rsa_tag_key_same_for_every_encoding_of_the_pair(rsa_a: RsaPair) -> None:
    """The primes, not d: d mod phi(n) and d mod lambda(n) give the same tag key."""
    priv = rsa_a.private
    nums = priv.private_numbers()
    p, q, e = nums.p, nums.q, nums.public_numbers.e
    d_phi = pow(e, -1, (p - 1) * (q - 1))
    d_other = d_phi if d_phi != nums.d else pow(e, -1, (p - 1) * (q - 1) // 2)
    assert d_other != nums.d
    other = rsa.RSAPrivateNumbers(
        p=q,  # primes swapped too
        q=p,
        d=d_other,
        dmp1=rsa.rsa_crt_dmp1(d_other, q),
        dmq1=rsa.rsa_crt_dmq1(d_other, p),
        iqmp=rsa.rsa_crt_iqmp(q, p),
        public_numbers=nums.public_numbers,
    ).private_key()
    pkcs8 = serialization.load_pem_private_key(
        priv.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        password=None,
    )
    assert isinstance(pkcs8, rsa.RSAPrivateKey)
    want = RsaMasterKey(priv).integrity_key()
    assert RsaMasterKey(other).integrity_key() == want
    assert RsaMasterKey(pkcs8).integrity_key() == want


def test_keys_never_shown(tk: I.TagKey, aes: AesMasterKey, small: Obj) -> None:
    secrets = [aes.integrity_key().hex(), small.dk.key.hex()]
    ck = I.ChunkKey(small.dk)
    texts = [repr(tk), str(tk), repr(ck), str(ck), repr(small.open(tk))]
    assert "<secret>" in repr(tk)
    assert "<secret>" in repr(ck)
    body = bytearray(small.body)
    body[0] ^= 1
    with pytest.raises(IntegrityError) as exc:
        small.open(tk).verify_chunk(ck, 0, bytes(body[:C]))
    texts.append(str(exc.value))
    tags = [t.hex() for t in small.open(tk).chunk_tags]
    for text in texts:
        assert not any(s in text for s in secrets + tags), text


# --------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("size", [0, 1, C - 1, C, C + 1, 32 * C, 32 * C + 1, 80 * C + 3])
def test_round_trip_aes(aes: AesMasterKey, tk: I.TagKey, size: int) -> None:
    obj = make_obj(aes, f"rt/{size}", size, seed=size)
    placement = I.place_chunk_tags(I.chunk_count(size), 0)
    assert (obj.companion is not None) == (placement is I.Placement.COMPANION)
    verified = obj.open(tk)
    ck = I.ChunkKey(obj.dk)
    verified.verify_range(ck, 0, obj.body)
    for i in range(I.chunk_count(size)):
        verified.verify_chunk(ck, i, obj.body[i * C : (i + 1) * C])
    verified.verify_attributes(tk, obj.attrs, obj.metadata)
    assert I.metadata_bytes(obj.metadata) <= I.METADATA_LIMIT


@pytest.mark.parametrize("size", [0, C + 1, 40 * C - 5])
def test_sealed_content_is_what_opening_the_sealed_tags_gives(
    aes: AesMasterKey, tk: I.TagKey, size: int
) -> None:
    """seal_tags' content (the writer's own, not opened) equals open_tags of what it sealed."""
    dk = DataKey.generate()
    body = encrypt(dk, 0, os.urandom(size))
    key = f"sealed/{size}"
    meta = {**EnvelopeCodec(aes).seal(dk), **attrs_fields(KAT_ATTRS), "cosencfs-size": str(size)}
    tags = I.tag_body(I.ChunkKey(dk), body)
    sealed = I.seal_tags(tk, key=key, size=size, metadata=meta, chunk_tags=tags, attrs=KAT_ATTRS)
    opened = I.open_tags(
        tk, key=key, size=size, metadata={**meta, **sealed.fields}, companion=sealed.companion
    )
    own = sealed.content
    assert isinstance(own, I.VerifiedContent)
    assert (own.key, own.size, own.object_tag) == (opened.key, opened.size, opened.object_tag)
    assert own.chunk_tags == opened.chunk_tags == tags
    assert I.b64url_encode(own.object_tag) == sealed.fields[I.OBJECT_TAG_FIELD]
    own.verify_range(I.ChunkKey(dk), 0, body)
    if size:
        flipped = bytearray(body[:C])
        flipped[0] ^= 1
        with pytest.raises(IntegrityError):
            own.verify_chunk(I.ChunkKey(dk), 0, bytes(flipped))
    # Still made only by the functions that compute or check the tag.
    with pytest.raises(TypeError):
        I.VerifiedContent(object(), key=key, size=size, object_tag=own.object_tag, chunk_tags=tags)


def test_round_trip_rsa_inline_at_2_mib(rsa_a: RsaPair) -> None:
    master = RsaMasterKey(rsa_a.private)
    tk = I.TagKey.from_master(master)
    obj = make_obj(master, "rsa/two-mib", 32 * C)
    assert obj.companion is None
    assert I.CHUNKS_FIELD in obj.metadata
    assert I.metadata_bytes(obj.metadata) <= I.INLINE_BUDGET
    obj.open(tk).verify_range(I.ChunkKey(obj.dk), 0, obj.body)
    big = make_obj(master, "rsa/more", 32 * C + 1)
    assert big.companion is not None
    assert I.TAGS_REF_FIELD in big.metadata
    big.open(tk).verify_range(I.ChunkKey(big.dk), 0, big.body)


@pytest.mark.parametrize(("offset", "length"), [(0, 1), (C - 1, 2), (5 * C + 9, 3 * C), (0, 10**9)])
def test_ranged_read_verifies_only_what_it_fetches(
    large: Obj, tk: I.TagKey, offset: int, length: int
) -> None:
    verified = large.open(tk)
    first, start, end = I.covering_chunks(offset, length, len(large.body))
    assert start == first * C
    assert start <= offset
    assert end >= min(offset + length, len(large.body))
    verified.verify_range(I.ChunkKey(large.dk), first, large.body[start:end])


def test_covering_chunks_edges() -> None:
    assert I.covering_chunks(0, 0, 100) == (0, 0, 0)
    assert I.covering_chunks(200, 5, 100) == (0, 200, 200)
    assert I.covering_chunks(C, 1, 3 * C) == (1, C, 2 * C)
    assert I.covering_chunks(C - 1, 2, C + 10) == (0, 0, C + 10)


def test_chunk_counts() -> None:
    assert [I.chunk_count(n) for n in (0, 1, C, C + 1)] == [0, 1, 1, 2]
    assert I.chunk_length(C + 10, 1) == 10
    with pytest.raises(ValueError, match="out of range"):
        I.chunk_length(C, 1)


# --------------------------------------------------------------------------
# Tampering: content


def _expect(exc: type[Exception] = IntegrityError) -> pytest.RaisesExc[Exception]:
    return pytest.raises(exc)


@pytest.mark.parametrize("which", ["first", "middle", "last"])
@pytest.mark.parametrize("fixture", ["small", "large"])
def test_flipped_ciphertext_bit_detected_in_its_chunk(
    request: pytest.FixtureRequest, tk: I.TagKey, fixture: str, which: str
) -> None:
    obj: Obj = request.getfixturevalue(fixture)
    n = I.chunk_count(len(obj.body))
    index = {"first": 0, "middle": n // 2, "last": n - 1}[which]
    pos = index * C + random.Random(index).randrange(I.chunk_length(len(obj.body), index))
    body = bytearray(obj.body)
    body[pos] ^= 0x01
    verified = obj.open(tk)  # the metadata is intact: the object tag still holds
    ck = I.ChunkKey(obj.dk)
    with _expect() as exc:
        verified.verify_range(ck, 0, body)
    assert isinstance(exc.value, IntegrityError)
    assert exc.value.chunk == index
    assert exc.value.key == obj.key
    assert f"chunk={index}" in str(exc.value)
    assert obj.key in str(exc.value)
    # the other chunks still verify (a ranged read elsewhere is served)
    for i in range(n):
        if i != index:
            verified.verify_chunk(ck, i, bytes(body[i * C : (i + 1) * C]))


def test_swapped_chunks_detected(large: Obj, tk: I.TagKey) -> None:
    b = large.body
    swapped = b[C : 2 * C] + b[:C] + b[2 * C :]
    with _expect() as exc:
        large.open(tk).verify_range(I.ChunkKey(large.dk), 0, swapped)
    assert isinstance(exc.value, IntegrityError)
    assert exc.value.chunk == 0


def test_chunk_at_wrong_index_detected(large: Obj, tk: I.TagKey) -> None:
    with _expect():
        large.open(tk).verify_chunk(I.ChunkKey(large.dk), 3, large.body[4 * C : 5 * C])


def test_chunk_of_another_object_detected(aes: AesMasterKey, tk: I.TagKey, large: Obj) -> None:
    other = make_obj(aes, large.key, len(large.body), seed=2)  # same plaintext, new data key
    with _expect():
        large.open(tk).verify_chunk(I.ChunkKey(large.dk), 0, other.body[:C])


@pytest.mark.parametrize("delta", [-1, -C, -(3 * C + 1), 1, C, -(10**9)])
@pytest.mark.parametrize("fixture", ["small", "large"])
def test_truncated_or_extended_body_detected(
    request: pytest.FixtureRequest, tk: I.TagKey, fixture: str, delta: int
) -> None:
    obj: Obj = request.getfixturevalue(fixture)
    size = max(0, len(obj.body) + delta)
    with _expect():
        I.open_tags(tk, key=obj.key, size=size, metadata=obj.metadata, companion=obj.companion)


def test_short_final_chunk_verified_against_size(small: Obj, tk: I.TagKey) -> None:
    verified = small.open(tk)
    last = I.chunk_count(len(small.body)) - 1
    with _expect() as exc:
        verified.verify_chunk(I.ChunkKey(small.dk), last, small.body[last * C :][:-1])
    assert "expected" in str(exc.value)


def test_other_object_key_detected(small: Obj, large: Obj, tk: I.TagKey) -> None:
    for obj in (small, large):
        with _expect():
            I.open_tags(
                tk,
                key=obj.key + ".moved",
                size=len(obj.body),
                metadata=obj.metadata,
                companion=obj.companion,
            )


def test_swapped_objects_detected(aes: AesMasterKey, tk: I.TagKey) -> None:
    a = make_obj(aes, "swap/a", 3 * C, seed=5)
    b = make_obj(aes, "swap/b", 3 * C, seed=6)
    # b's body and metadata under a's name: everything of b is genuine but the name
    with _expect():
        I.open_tags(tk, key=a.key, size=len(b.body), metadata=b.metadata)
    # a's metadata with b's body: the chunks fail
    verified = a.open(tk)
    with _expect():
        verified.verify_range(I.ChunkKey(a.dk), 0, b.body)


@pytest.mark.parametrize(
    "field", [KEY_FIELD, IV_FIELD, KCV_FIELD, KID_FIELD, WRAP_FIELD, VERSION_FIELD]
)
def test_changed_envelope_field_detected(aes: AesMasterKey, tk: I.TagKey, field: str) -> None:
    import base64

    obj = make_obj(aes, "env/x", 2 * C, seed=9)
    meta = dict(obj.metadata)
    if field in (KEY_FIELD, IV_FIELD, KCV_FIELD):
        raw = bytearray(base64.b64decode(meta[field]))
        raw[0] ^= 0x80
        meta[field] = base64.b64encode(bytes(raw)).decode()
    elif field == KID_FIELD:
        meta[field] = "0123456789abcdef"
    elif field == WRAP_FIELD:
        meta[field] = WrapAlg.RSA_OAEP.value
    else:
        meta[field] = "2"
    # A change the envelope parser accepts fails the object tag; others are a
    # damaged envelope before any tag is computed.  Either way: no content.
    with pytest.raises((IntegrityError, DamagedEnvelopeError)):
        I.open_tags(tk, key=obj.key, size=len(obj.body), metadata=meta)


@pytest.mark.parametrize(
    "change",
    [
        {"version": "2"},
        {"wrap": WrapAlg.AES_KW},
        {"key_id": "0123456789abcdef"},
        {"wrapped_key": bytes(32)},
        {"wrapped_iv": bytes(16)},
        {"kcv": bytes(16)},
    ],
)
def test_object_tag_binds_every_envelope_field(
    small: Obj, tk: I.TagKey, change: dict[str, object]
) -> None:
    env = sealed_envelope(small.metadata)
    tags = I.tag_body(I.ChunkKey(small.dk), small.body)
    size = len(small.body)
    base = I.object_tag(tk, key=small.key, size=size, envelope=env, chunk_tags=tags)
    other = dataclasses.replace(env, **change)  # type: ignore[arg-type]
    assert I.object_tag(tk, key=small.key, size=size, envelope=other, chunk_tags=tags) != base


def test_reordered_inline_chunk_tags_detected(small: Obj, tk: I.TagKey) -> None:
    tags = I.ChunkTags.from_inline(small.metadata[I.CHUNKS_FIELD])
    reordered = I.ChunkTags([tags[1], tags[0], *tags.tags[2:]])
    meta = {**small.metadata, I.CHUNKS_FIELD: reordered.inline_value()}
    with _expect():
        I.open_tags(tk, key=small.key, size=len(small.body), metadata=meta)


def test_stripped_chunk_tags_detected(small: Obj, large: Obj, tk: I.TagKey) -> None:
    no_inline = {k: v for k, v in small.metadata.items() if k != I.CHUNKS_FIELD}
    with _expect():
        I.open_tags(tk, key=small.key, size=len(small.body), metadata=no_inline)
    no_ref = {k: v for k, v in large.metadata.items() if k != I.TAGS_REF_FIELD}
    with _expect():
        I.open_tags(
            tk, key=large.key, size=len(large.body), metadata=no_ref, companion=large.companion
        )


def test_untagged_object_is_not_verified(small: Obj, tk: I.TagKey) -> None:
    stripped = {k: v for k, v in small.metadata.items() if k not in I.TAG_FIELDS}
    assert I.has_tags(small.metadata)
    assert not I.has_tags(stripped)
    with _expect() as exc:
        I.open_tags(tk, key=small.key, size=len(small.body), metadata=stripped)
    assert "untagged" in str(exc.value)


def test_forged_tags_without_master_key_fail(small: Obj, tk: I.TagKey) -> None:
    """Anyone can make a data key, an envelope (RSA public key) and chunk tags; not the root."""
    forger = I.TagKey(os.urandom(32))
    forged = I.seal_tags(
        forger,
        key=small.key,
        size=len(small.body),
        metadata=small.metadata,
        chunk_tags=I.tag_body(I.ChunkKey(small.dk), small.body),
        attrs=small.attrs,
    )
    with _expect():
        I.open_tags(
            tk, key=small.key, size=len(small.body), metadata={**small.metadata, **forged.fields}
        )


def test_wrong_master_key_fails(small: Obj) -> None:
    with _expect():
        small.open(I.TagKey.from_master(AesMasterKey(bytes(32))))


# --------------------------------------------------------------------------
# Tampering: companion


def test_companion_deleted_detected(large: Obj, tk: I.TagKey) -> None:
    with _expect() as exc:
        I.open_tags(tk, key=large.key, size=len(large.body), metadata=large.metadata)
    assert "missing" in str(exc.value)


def test_companion_replaced_detected(aes: AesMasterKey, large: Obj, tk: I.TagKey) -> None:
    other = make_obj(aes, large.key, len(large.body), seed=3)
    assert other.companion is not None
    # another genuine companion, its digest not ours
    with _expect() as exc:
        I.open_tags(
            tk,
            key=large.key,
            size=len(large.body),
            metadata=large.metadata,
            companion=other.companion,
        )
    assert "replaced" in str(exc.value)
    # ... and with the ref changed to match it
    meta = {**large.metadata, I.TAGS_REF_FIELD: other.metadata[I.TAGS_REF_FIELD]}
    with _expect() as exc:
        I.open_tags(
            tk, key=large.key, size=len(large.body), metadata=meta, companion=other.companion
        )
    assert "object tag" in str(exc.value)


def test_companion_tags_reordered_with_matching_ref_detected(large: Obj, tk: I.TagKey) -> None:
    assert large.companion is not None
    verified = large.open(tk)
    tags = list(verified.chunk_tags)
    tags[0], tags[1] = tags[1], tags[0]
    forged = I.ChunkTags(tags)
    meta = {**large.metadata, I.TAGS_REF_FIELD: I.b64url_encode(forged.digest())}
    with _expect():
        I.open_tags(
            tk,
            key=large.key,
            size=len(large.body),
            metadata=meta,
            companion=forged.companion_body(),
        )


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b"XXXX" + b[4:],
        lambda b: b[:4] + b"\x02" + b[5:],
        lambda b: b[:8] + struct.pack(">I", 4096) + b[12:],
        lambda b: b[:-1],
        lambda b: b[:12] + struct.pack(">Q", 7) + b[20:],
    ],
)
def test_companion_malformed_detected(large: Obj, tk: I.TagKey, mangle: object) -> None:
    assert large.companion is not None
    assert callable(mangle)
    body = mangle(large.companion)
    meta = {**large.metadata, I.TAGS_REF_FIELD: I.b64url_encode(hashlib.sha256(body).digest())}
    with _expect():
        I.open_tags(tk, key=large.key, size=len(large.body), metadata=meta, companion=body)


def test_inline_and_companion_together_refused(large: Obj, small: Obj, tk: I.TagKey) -> None:
    meta = {**large.metadata, I.CHUNKS_FIELD: small.metadata[I.CHUNKS_FIELD]}
    with _expect():
        I.open_tags(
            tk, key=large.key, size=len(large.body), metadata=meta, companion=large.companion
        )


# --------------------------------------------------------------------------
# Attributes


def test_attribute_change_detected_content_still_verifies(small: Obj, tk: I.TagKey) -> None:
    verified = small.open(tk)
    for changed in (
        dataclasses.replace(small.attrs, mode=0o104755),
        dataclasses.replace(small.attrs, uid=0),
        dataclasses.replace(small.attrs, gid=0),
        dataclasses.replace(small.attrs, mtime_ns=small.attrs.mtime_ns + 1),
        dataclasses.replace(small.attrs, rdev=0),
        dataclasses.replace(small.attrs, xattrs={}),
        dataclasses.replace(small.attrs, xattrs={"user.comment": b"ho"}),
    ):
        with _expect() as exc:
            verified.verify_attributes(tk, changed, small.metadata)
        assert isinstance(exc.value, IntegrityError)
        assert exc.value.chunk is None
    verified.verify_range(I.ChunkKey(small.dk), 0, small.body)  # content unaffected


def test_attribute_sets_swapped_between_objects_detected(aes: AesMasterKey, tk: I.TagKey) -> None:
    a = make_obj(aes, "attrs/a", 100, attrs=dataclasses.replace(KAT_ATTRS, uid=1), seed=7)
    b = make_obj(aes, "attrs/b", 100, attrs=dataclasses.replace(KAT_ATTRS, uid=0), seed=8)
    a_with_b = {**a.metadata, I.ATTR_TAG_FIELD: b.metadata[I.ATTR_TAG_FIELD]}
    with _expect():
        a.open(tk).verify_attributes(tk, b.attrs, a_with_b)
    with _expect():
        a.open(tk).verify_attributes(tk, b.attrs, a.metadata)


def test_attribute_tag_missing_or_malformed(small: Obj, tk: I.TagKey) -> None:
    verified = small.open(tk)
    for meta in (
        {k: v for k, v in small.metadata.items() if k != I.ATTR_TAG_FIELD},
        {**small.metadata, I.ATTR_TAG_FIELD: "not base64url!"},
    ):
        with _expect():
            verified.verify_attributes(tk, small.attrs, meta)


def test_attribute_encoding_is_canonical() -> None:
    a = I.AttrSet(0o644, 1, 2, -1, None, {"b": b"2", "a": b"1"})
    b = I.AttrSet(0o644, 1, 2, -1, None, {"a": b"1", "b": b"2"})
    assert a.encode() == b.encode()
    # -1 ns = second -1, nanosecond 999999999
    assert a.encode()[12:24] == struct.pack(">qI", -1, 999_999_999)
    assert I.AttrSet(1, 1, 1, 0, None).encode() != I.AttrSet(1, 1, 1, 0, 0).encode()
    # name/value boundaries cannot be moved
    assert (
        I.AttrSet(1, 1, 1, 0, None, {"ab": b"c"}).encode()
        != I.AttrSet(1, 1, 1, 0, None, {"a": b"bc"}).encode()
    )
    with pytest.raises(ValueError, match="does not fit"):
        I.AttrSet(-1, 0, 0, 0).encode()
    with pytest.raises(ValueError, match="does not fit"):
        I.AttrSet(0, 1 << 32, 0, 0).encode()


def test_directory_marker_attribute_tag(tk: I.TagKey) -> None:
    """A directory marker has no content tag: its attribute tag takes an empty one."""
    attrs = I.AttrSet(0o40755, 1000, 1000, 0)
    tag = I.attribute_tag(tk, key="d/", object_tag=b"", attrs=attrs)
    I.verify_attributes(tk, key="d/", object_tag=b"", attrs=attrs, tag=tag)
    with _expect():
        I.verify_attributes(tk, key="e/", object_tag=b"", attrs=attrs, tag=tag)


# --------------------------------------------------------------------------
# Incremental tagging


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=5 * C + 100),
    cuts=st.lists(st.integers(min_value=0, max_value=5 * C + 100), max_size=12),
)
def test_incremental_tagger_equals_one_shot(size: int, cuts: list[int]) -> None:
    dk = KAT_DK
    body = bytes(random.Random(size).randbytes(size))
    ck = I.ChunkKey(dk)
    expected = [I.chunk_tag(ck, i, body[i * C : (i + 1) * C]) for i in range(I.chunk_count(size))]
    tagger = I.ChunkTagger(ck)
    points = sorted({0, size, *(c for c in cuts if c <= size)})
    for a, b in itertools.pairwise(points):
        tagger.update(memoryview(body)[a:b] if a % 2 else body[a:b])
    assert tagger.finish() == expected
    assert list(I.tag_body(ck, body)) == expected


def test_parts_tagged_apart_concatenate(small: Obj) -> None:
    """Parts starting on chunk boundaries can be tagged in parallel."""
    ck = I.ChunkKey(small.dk)
    body = small.body
    first = I.ChunkTagger(ck)
    first.update(body[: 2 * C])
    second = I.ChunkTagger(ck, first_chunk=2)
    second.update(body[2 * C :])
    assert first.finish() + second.finish() == list(I.tag_body(ck, body))


def test_tagger_finish_is_final() -> None:
    t = I.ChunkTagger(I.ChunkKey(KAT_DK))
    t.update(b"abc")
    assert t.finish() == t.finish()
    with pytest.raises(ValueError, match="after finish"):
        t.update(b"d")


# --------------------------------------------------------------------------
# Rename and rekey without the body


def test_rename_retag_without_body_equals_fresh_tags(
    aes: AesMasterKey, tk: I.TagKey, large: Obj
) -> None:
    new_key = "elsewhere/renamed.bin"
    verified = large.open(tk)  # metadata + companion only
    old_meta = {k: v for k, v in large.metadata.items() if k not in I.TAG_FIELDS}
    moved = I.retag(tk, verified, key=new_key, metadata=old_meta, attrs=large.attrs)
    fresh = I.seal_tags(
        tk,
        key=new_key,
        size=len(large.body),
        metadata=old_meta,
        chunk_tags=I.tag_body(I.ChunkKey(large.dk), large.body),
        attrs=large.attrs,
    )
    assert moved.fields == fresh.fields
    assert moved.companion == fresh.companion
    renamed = {**old_meta, **moved.fields}
    again = I.open_tags(
        tk, key=new_key, size=len(large.body), metadata=renamed, companion=moved.companion
    )
    again.verify_range(I.ChunkKey(large.dk), 0, large.body)
    # the old name no longer verifies with the new tags
    with _expect():
        I.open_tags(
            tk, key=large.key, size=len(large.body), metadata=renamed, companion=moved.companion
        )


def test_rekey_keeps_chunk_tags(
    aes: AesMasterKey, tk: I.TagKey, small: Obj, rsa_a: RsaPair
) -> None:
    new_master = RsaMasterKey(rsa_a.private)
    new_tk = I.TagKey.from_master(new_master)
    verified = small.open(tk)
    rewrapped = EnvelopeCodec(aes).rewrap(small.metadata, EnvelopeCodec(new_master), key=small.key)
    rewrapped = {k: v for k, v in rewrapped.items() if k not in I.TAG_FIELDS}
    sealed = I.retag(new_tk, verified, key=small.key, metadata=rewrapped, attrs=small.attrs)
    meta = {**rewrapped, **sealed.fields}
    assert meta[I.CHUNKS_FIELD] == small.metadata[I.CHUNKS_FIELD]  # chunk tags unchanged
    # the data key is the same: the chunk key and every chunk still verify
    dk = EnvelopeCodec(new_master).open(meta, key=small.key)
    out = I.open_tags(new_tk, key=small.key, size=len(small.body), metadata=meta)
    out.verify_range(I.ChunkKey(dk), 0, small.body)
    out.verify_attributes(new_tk, small.attrs, meta)
    with _expect():  # the old tag key does not verify the new tags
        I.open_tags(tk, key=small.key, size=len(small.body), metadata=meta)
    # the old envelope with the new tags: the envelope is bound
    with pytest.raises((IntegrityError, CryptoError)):
        I.open_tags(
            new_tk,
            key=small.key,
            size=len(small.body),
            metadata={**small.metadata, **sealed.fields},
        )


def test_tag_key_chosen_by_the_envelopes_key_id(
    aes: AesMasterKey, small: Obj, rsa_a: RsaPair
) -> None:
    """During a rotation a mount holds two masters: the object's kid picks the tag key."""
    new = RsaMasterKey(rsa_a.private)
    tk = I.TagKey.for_object(small.metadata, [new, aes], key=small.key)
    small.open(tk)
    with pytest.raises(CryptoError, match="does not have"):
        I.TagKey.for_object(small.metadata, [new], key=small.key)


def test_verified_content_only_from_verification(small: Obj) -> None:
    with pytest.raises(TypeError):
        I.VerifiedContent(object(), key="k", size=0, object_tag=b"", chunk_tags=I.ChunkTags([]))


# --------------------------------------------------------------------------
# Metadata: encodings and budget


def test_b64url_canonical_only() -> None:
    assert I.b64url_encode(b"\xff\xfe") == "__4"
    assert I.b64url_decode("__4") == b"\xff\xfe"
    for bad in ("__4=", "__5", "+/4", "a", "ab c", "é"):
        assert I.b64url_decode(bad) is None


def test_metadata_limit_is_the_stores() -> None:
    from cosencfs.store.base import MAX_USER_META_BYTES

    assert I.METADATA_LIMIT == MAX_USER_META_BYTES
    assert I.metadata_bytes({"mode": "33188"}) == len("x-cos-meta-mode") + 5


def test_placement_rule() -> None:
    assert I.place_chunk_tags(0, 0) is I.Placement.NONE
    assert I.place_chunk_tags(1, 0) is I.Placement.INLINE
    assert I.place_chunk_tags(I.INLINE_CHUNKS_MAX, 0) is I.Placement.INLINE
    assert I.place_chunk_tags(I.INLINE_CHUNKS_MAX + 1, 0) is I.Placement.COMPANION
    # the budget: the last byte that fits, and one more
    n = 10
    room = I.INLINE_BUDGET - I.tag_fields_bytes(I.Placement.INLINE, n)
    assert I.place_chunk_tags(n, room) is I.Placement.INLINE
    assert I.place_chunk_tags(n, room + 1) is I.Placement.COMPANION
    # the companion's fields always fit beside a 4096-bit RSA envelope and attributes
    assert 1587 + 200 + I.tag_fields_bytes(I.Placement.COMPANION, 10**6) <= I.METADATA_LIMIT


@pytest.mark.parametrize(("bits", "inline_max"), [(2048, 32), (3072, 20), (4096, 4)])
def test_rsa_budget(rsa_a: RsaPair, bits: int, inline_max: int) -> None:
    """How many chunk tags fit inline beside each RSA envelope and typical attributes."""
    import base64

    meta = {**EnvelopeCodec(RsaMasterKey(rsa_a.private)).seal(KAT_DK), **attrs_fields(KAT_ATTRS)}
    # an RSA-n envelope differs only in the length of the two wrapped values
    wrapped = base64.b64encode(bytes(bits // 8)).decode()
    meta[KEY_FIELD] = meta[IV_FIELD] = wrapped
    meta["cosencfs-size"] = str(2**40)
    other = I.metadata_bytes(meta)
    fits = max(n for n in range(1, 40) if I.place_chunk_tags(n, other) is I.Placement.INLINE)
    assert fits == inline_max
