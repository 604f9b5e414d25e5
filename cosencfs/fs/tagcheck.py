"""Checking integrity tags: what a read verifies, what attributes the mount applies.

The read half of the mount's integrity tags (cosencfs/fs/tags.py has the
write half and the policy; docs/format.md 12.9-12.10 the contract):
:meth:`TagChecker.verify` gives the ``VerifiedContent`` every fetched chunk
is checked against, refusing stripped (downgrade) and replaced (rollback)
versions through the journal's ``tags`` table; :meth:`TagChecker.attr_meta`
drops attributes whose tag fails, so the defaults apply.
"""

from __future__ import annotations

import hmac
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from cosencfs.cache.journal import Journal
from cosencfs.crypto.integrity import (
    ATTR_TAG_FIELD,
    OBJECT_TAG_FIELD,
    TAG_SIZE,
    AttrSet,
    ChunkTags,
    TagKey,
    VerifiedContent,
    attribute_tag,
    b64url_decode,
    b64url_encode,
    companion_digest,
    open_tags,
    sealed_envelope,
)
from cosencfs.crypto.xattrseal import XATTR_FIELD
from cosencfs.errors import CryptoError, IntegrityError, NotFoundError
from cosencfs.fs.attrs import META_GID, META_MODE, META_MTIME, META_RDEV, META_UID, parse_mtime
from cosencfs.fs.tagparts import bare
from cosencfs.store.base import ObjectStore

log = logging.getLogger(__name__)

#: The reserved name (in the mount's root) under which companions live; the
#: mount hides it and refuses it as a file name (cosencfs/fs/names.py).
COMPANION_DIR = ".cosencfs-tags"
#: Verified companions kept in memory, by digest (a few KiB each).
COMPANIONS_CACHED = 64
_NO_TAG_KEY = "no tag key for the object's master key id"


@dataclass(slots=True)
class TagStats:
    """What ``cosencfs stats`` shows under ``integrity``."""

    objects_verified: int = 0
    objects_untagged: int = 0
    objects_refused: int = 0
    attribute_failures: int = 0
    companions_written: int = 0
    companions_fetched: int = 0


def attr_set(meta: Mapping[str, str]) -> AttrSet:
    """The attributes an attribute tag covers, as the metadata fields spell them.

    Missing fields count as 0, so a tag over them is still well defined;
    values that do not parse or fit make the tag fail (ValueError).
    """

    def num(name: str) -> int:
        text = meta.get(name)
        return 0 if text is None else int(text)

    mtime = parse_mtime(meta.get(META_MTIME, ""))
    # Present only on device nodes: its presence is covered as well as its value.
    rdev = None if META_RDEV not in meta else num(META_RDEV)
    # The sealed extended attributes, as stored: a swapped field fails the tag.
    sealed = meta.get(XATTR_FIELD)
    xattrs = {} if sealed is None else {XATTR_FIELD: sealed.encode("ascii")}
    return AttrSet(num(META_MODE), num(META_UID), num(META_GID), mtime or 0, rdev, xattrs)


class TagChecker:
    """Verifying objects and attributes with the tag keys of every master the mount holds."""

    def __init__(
        self,
        store: ObjectStore,
        journal: Journal,
        keys: dict[str, TagKey],
        *,
        prefix: str,
        require: bool,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.journal = journal
        self.require = require
        self.stats = TagStats()
        self._keys = keys
        self._companions: OrderedDict[bytes, ChunkTags] = OrderedDict()
        self._attr_warned: set[tuple[str, str]] = set()

    def companion_key(self, digest: bytes) -> str:
        return f"{self.prefix}{COMPANION_DIR}/{b64url_encode(digest)}"

    async def verify(
        self, key: str, size: int, meta: Mapping[str, str], *, current: bool = True
    ) -> VerifiedContent | None:
        """The verified tags of the object at ``key``; None: untagged, read as before.

        Raises IntegrityError when its tags fail, when it is untagged and
        must not be (``--require-integrity``, or this mount knows it tagged),
        or when it is a version this mount saw replaced (rollback).
        ``current=False``: an object the caller knew before it was replaced
        (a file unlinked while open reads its own, older object): its tags
        are checked, the memory of what is current at ``key`` is neither
        consulted nor changed.
        """
        # With ``current``, the memory is read before any await for the
        # downgrade check and again after the companion's GET for the
        # rollback check and its update (no await between those two).
        try:
            if OBJECT_TAG_FIELD not in meta:
                if self.require:
                    raise IntegrityError("untagged object refused (--require-integrity)", key=key)
                if current and self.journal.get_tags(key).current is not None:
                    raise IntegrityError(
                        "untagged now, but tagged when this mount last wrote or read it "
                        "(tags stripped): refused",
                        key=key,
                    )
                self.stats.objects_untagged += 1
                return None
            tk = self._tag_key(meta, key)
            digest = companion_digest(meta, key=key)
            companion = None if digest is None else await self._companion(key, digest)
            verified = open_tags(tk, key=key, size=size, metadata=meta, companion=companion)
            tag = meta[OBJECT_TAG_FIELD]
            memory = self.journal.get_tags(key) if current else None
            if memory is not None and tag in memory.older:
                raise IntegrityError(
                    "an older version of the object, replaced since (rollback): refused", key=key
                )
        except IntegrityError:
            self.stats.objects_refused += 1
            raise
        if memory is not None and memory.current != tag:
            self.journal.put_tags(key, memory.seen(tag))
        self.stats.objects_verified += 1
        return verified

    async def _companion(self, key: str, digest: bytes) -> bytes:
        cached = self._companions.get(digest)
        if cached is not None:
            self._companions.move_to_end(digest)
            return cached.companion_body()
        try:
            body = await self.store.get(self.companion_key(digest))
        except NotFoundError:
            raise IntegrityError(
                "the companion object holding the chunk tags is missing", key=key
            ) from None
        self.stats.companions_fetched += 1
        tags = ChunkTags.from_companion(body, digest, key=key)
        self._companions[digest] = tags
        while len(self._companions) > COMPANIONS_CACHED:
            self._companions.popitem(last=False)
        return body

    def attrs_hold(self, key: str, meta: Mapping[str, str], *, is_dir: bool) -> bool:
        """Whether ``meta``'s attributes would be applied (no log, no count).

        For records of the attribute cache: one that no longer verifies (a
        rekey moved the tags to another key, say) is asked for again.
        """
        text = meta.get(ATTR_TAG_FIELD)
        if text is None and not self.require and OBJECT_TAG_FIELD not in meta:
            return True
        return self._attr_failure(key, meta, text, is_dir=is_dir) is None

    def attrs_authentic(self, key: str, meta: Mapping[str, str], *, is_dir: bool = False) -> bool:
        """Whether ``meta`` carries an attribute tag that verifies (a key of ours wrote
        these attributes): device nodes are live on ``-o dev`` only then."""
        text = meta.get(ATTR_TAG_FIELD)
        return text is not None and self._attr_failure(key, meta, text, is_dir=is_dir) is None

    def attr_meta(self, key: str, meta: Mapping[str, str], *, is_dir: bool) -> Mapping[str, str]:
        """``meta``, or ``meta`` without attribute fields when its attribute tag fails.

        Without them the mount's default attributes apply; the content is
        unaffected (its own tags decide).  One log line per object version.
        """
        text = meta.get(ATTR_TAG_FIELD)
        if text is None and not self.require and OBJECT_TAG_FIELD not in meta:
            return meta  # untagged: as before
        reason = self._attr_failure(key, meta, text, is_dir=is_dir)
        if reason is None:
            return meta
        self.stats.attribute_failures += 1
        seen = (key, meta.get(OBJECT_TAG_FIELD, "") + (text or ""))
        if reason == _NO_TAG_KEY:
            # Under a master key this mount lacks: reading the content fails
            # and says so; one line per object is enough.
            log.debug("%r: %s; default attributes apply", key, reason)
        elif seen not in self._attr_warned:
            self._attr_warned.add(seen)
            log.error("%r: %s; default attributes apply", key, reason)
        dropped = (META_MODE, META_UID, META_GID, META_MTIME, META_RDEV, XATTR_FIELD)
        return {k: v for k, v in meta.items() if k not in dropped}

    def _attr_failure(
        self, key: str, meta: Mapping[str, str], text: str | None, *, is_dir: bool
    ) -> str | None:
        tag = None if text is None else b64url_decode(text)
        if tag is None or len(tag) != TAG_SIZE:
            return "attribute tag missing or malformed"
        otag = b""
        no_content = bare(meta, is_dir=is_dir)
        if not no_content:
            raw = b64url_decode(meta.get(OBJECT_TAG_FIELD, ""))
            if raw is None or len(raw) != TAG_SIZE:
                return "attribute tag without an object tag"
            otag = raw
        try:
            keys = list(self._keys.values()) if no_content else [self._tag_key(meta, key)]
        except (CryptoError, IntegrityError):
            return _NO_TAG_KEY
        try:
            attrs = attr_set(meta)
        except ValueError:
            return "attributes do not parse"
        for tk in keys:
            if hmac.compare_digest(attribute_tag(tk, key=key, object_tag=otag, attrs=attrs), tag):
                return None
        return "attribute tag does not verify (attributes altered)"

    def _tag_key(self, meta: Mapping[str, str], key: str) -> TagKey:
        """The tag key of the master named by the envelope's key id (format.md, 12.9)."""
        try:
            kid = sealed_envelope(meta, key=key).key_id
        except CryptoError as exc:
            raise IntegrityError(f"tagged, but {exc}", key=key) from None
        tk = self._keys.get(kid)
        if tk is None:
            raise IntegrityError(
                f"tagged under master key id {kid}, whose secret this mount does not have",
                key=key,
            )
        return tk
