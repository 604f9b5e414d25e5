"""Integrity tags through a key rotation: the same body under a new envelope.

``rekey`` re-wraps each data key under the new master key; the chunk tags
(keyed from the data key) stay valid, the object and attribute tags are
recomputed under the new master's tag key from metadata alone, after the
old ones verify (docs/format.md, 12.5).  A new master without its secret
half (an RSA public key) cannot tag: the object is then left untagged and
counted, and mounts that knew it tagged will refuse it until they read it
with the new key's secret (docs/keys-and-fsck.md).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping

from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.integrity import (
    ATTR_TAG_FIELD,
    OBJECT_TAG_FIELD,
    TAG_FIELDS,
    TagKey,
    attribute_tag,
    b64url_decode,
    b64url_encode,
    retag_fields,
)
from cosencfs.crypto.xattrseal import XATTR_FIELD, XattrKey, open_any
from cosencfs.errors import CryptoError, IntegrityError
from cosencfs.fs.tagcheck import attr_set

log = logging.getLogger(__name__)


def _tag_key(codec: EnvelopeCodec) -> TagKey | None:
    try:
        return TagKey.from_master(codec.master)
    except CryptoError:
        return None


def resealed_xattrs(
    old: EnvelopeCodec, new: EnvelopeCodec, key: str, meta: Mapping[str, str]
) -> dict[str, str]:
    """``meta`` with its extended attributes sealed under the new master (format.md, 13).

    Their key derives from the master's tag key, so a rotation re-seals
    them (a fresh nonce); ones that open under neither key, or a new master
    that cannot seal (public key only), drop them, with a warning.
    """
    out = dict(meta)
    text = out.pop(XATTR_FIELD, None)
    if text is None:
        return out
    new_tk, old_tk = _tag_key(new), _tag_key(old)
    keys = [XattrKey(tk) for tk in (old_tk, new_tk) if tk is not None]
    try:
        xattrs = open_any(keys, key, text)
    except IntegrityError as exc:
        log.warning("%r: extended attributes dropped: %s", key, exc)
        return out
    if new_tk is None:
        log.warning("%r: the new master key cannot seal extended attributes: dropped", key)
        return out
    out[XATTR_FIELD] = XattrKey(new_tk).seal(key, xattrs)
    return out


def retagged(
    source: EnvelopeCodec,
    new: EnvelopeCodec,
    key: str,
    size: int,
    old_meta: Mapping[str, str],
    new_meta: Mapping[str, str],
) -> dict[str, str]:
    """``new_meta`` (the re-wrapped envelope) with tags for it, or untagged.

    Raises IntegrityError when the object's tags do not verify under the
    key that opened it: an altered object is not re-tagged.
    """
    out = {k: v for k, v in new_meta.items() if k not in TAG_FIELDS}
    out = resealed_xattrs(source, new, key, out)
    if OBJECT_TAG_FIELD not in old_meta:
        return out  # untagged before, untagged after
    old_tk = _tag_key(source)
    if old_tk is None:
        raise IntegrityError("the old master key has no secret half to check the tags", key=key)
    new_tk = _tag_key(new)
    if new_tk is None:
        log.warning("%r: the new master key cannot tag (public key only): left untagged", key)
        return out
    keep = {k: v for k, v in old_meta.items() if k in TAG_FIELDS and k != ATTR_TAG_FIELD}
    fields = retag_fields(
        old_tk,
        new_tk,
        old_key=key,
        new_key=key,
        size=size,
        old_metadata=old_meta,
        new_metadata=out,
        attrs=attr_set({**old_meta, **out}),  # the re-sealed xattrs
    )
    return {**out, **keep, **fields}


def retagged_marker(
    old: EnvelopeCodec, new: EnvelopeCodec, key: str, meta: Mapping[str, str]
) -> dict[str, str] | None:
    """A directory marker's metadata with its attribute tag under the new key.

    None when there is nothing to do (no tag, or already under the new key).
    A tag that verifies under no key the rotation knows is dropped: the
    mount shows defaults either way, and a new tag must not vouch for it.
    """
    text = meta.get(ATTR_TAG_FIELD)
    tag = None if text is None else b64url_decode(text)
    if tag is None:
        return None
    new_tk = _tag_key(new)
    try:
        attrs = attr_set(meta)
    except ValueError:
        attrs = None
    candidates = [tk for tk in (_tag_key(old), new_tk) if tk is not None]
    valid = attrs is not None and any(
        hmac.compare_digest(attribute_tag(tk, key=key, object_tag=b"", attrs=attrs), tag)
        for tk in candidates
    )
    out = {k: v for k, v in meta.items() if k != ATTR_TAG_FIELD}
    if not valid or new_tk is None or attrs is None:
        return {k: v for k, v in out.items() if k != XATTR_FIELD}
    if hmac.compare_digest(attribute_tag(new_tk, key=key, object_tag=b"", attrs=attrs), tag):
        return None  # (its xattrs, if any, were sealed under the new key with it)
    out = resealed_xattrs(old, new, key, out)
    new_tag = attribute_tag(new_tk, key=key, object_tag=b"", attrs=attr_set(out))
    out[ATTR_TAG_FIELD] = b64url_encode(new_tag)
    return out
