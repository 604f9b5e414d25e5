"""The mount's integrity tags: what it writes carries them, what it reads must verify.

docs/format.md, section 12, is the construction; this module is the
mount's policy around it:

- **writing**: every object the mount writes under a cosencfs envelope gets
  chunk tags (computed from the upload copy's ciphertext), an object tag
  and an attribute tag; large files' chunk tags go to a companion object
  ``<prefix>.cosencfs-tags/<D>`` (content-addressed, so a rename moves no
  companion), stored *before* the object that names it;
- **reading**: an object's tags are verified before any byte of it is
  served (:meth:`MountTags.verify` gives the ``VerifiedContent`` the
  fetcher checks each chunk against); an untagged object is read as before
  unless ``--require-integrity``, or unless this mount remembers it tagged
  (stripped tags: downgrade), and a version this mount saw replaced is
  refused (rollback), both through the journal's ``tags`` table;
- **attributes**: a failing attribute tag means default attributes, the
  content still readable, one log line.

A public-key-only RSA mount has no tag key: it writes untagged objects (and
says so once); ``--require-integrity`` refuses to start without a tag key.
"""

from __future__ import annotations

import hmac
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import trio

from cosencfs.cache.journal import Journal
from cosencfs.crypto.ctr import DataKey
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.integrity import (
    ATTR_TAG_FIELD,
    CONTENT_TAG_FIELDS,
    OBJECT_TAG_FIELD,
    TAG_FIELDS,
    TAG_SIZE,
    AttrSet,
    ChunkKey,
    ChunkTagger,
    ChunkTags,
    TagKey,
    VerifiedContent,
    attribute_tag,
    b64url_decode,
    b64url_encode,
    companion_digest,
    open_tags,
    retag_fields,
    seal_tags,
    sealed_envelope,
)
from cosencfs.errors import ConfigError, CryptoError, IntegrityError, NotFoundError
from cosencfs.fs.attrs import META_GID, META_MODE, META_MTIME, META_RDEV, META_UID, parse_mtime
from cosencfs.fs.deleter import Deleter
from cosencfs.fs.tagparts import bare, tag_ciphertext
from cosencfs.store.base import ObjectStore

log = logging.getLogger(__name__)

#: The reserved name (in the mount's root) under which companions live; the
#: mount hides it and refuses it as a file name (cosencfs/fs/names.py).
COMPANION_DIR = ".cosencfs-tags"
#: Verified companions kept in memory, by digest (a few KiB each).
COMPANIONS_CACHED = 64
_NO_TAG_KEY = "no tag key for the object's master key id"
#: Ciphertext read per step when tagging an object.
_TAG_READ = 4 * 1024 * 1024


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
    return AttrSet(num(META_MODE), num(META_UID), num(META_GID), mtime or 0, rdev)


class MountTags:
    def __init__(
        self,
        store: ObjectStore,
        codec: EnvelopeCodec,
        journal: Journal,
        deleter: Deleter,
        *,
        prefix: str,
        require: bool,
        write: bool = True,
    ) -> None:
        self.store = store
        self.journal = journal
        self.deleter = deleter
        self.prefix = prefix
        self.require = require
        self.stats = TagStats()
        self._keys: dict[str, TagKey] = {}
        for master in codec.masters:
            try:
                self._keys[master.key_id] = TagKey.from_master(master)
            except CryptoError:
                pass  # a public-only RSA key: cannot tag, cannot read either
        mine = self._keys.get(codec.key_id)
        if mine is None and require:
            raise ConfigError(
                "--require-integrity needs the secret master key (an RSA private key): "
                "a public-key-only mount cannot tag what it writes"
            )
        if mine is None:
            log.warning("the master key has no secret half here: objects are written untagged")
        #: None: write untagged objects (public-only key, or the benchmark's switch).
        self.writer = mine if write else None
        self._companions: OrderedDict[bytes, ChunkTags] = OrderedDict()
        self._attr_warned: set[tuple[str, str]] = set()

    # -- writing ---------------------------------------------------------------

    @property
    def writing(self) -> bool:
        return self.writer is not None

    def companion_key(self, digest: bytes) -> str:
        return f"{self.prefix}{COMPANION_DIR}/{b64url_encode(digest)}"

    async def tag_copy(
        self, path: str, dk: DataKey, start: int, end: int, limiter: trio.CapacityLimiter
    ) -> list[bytes]:
        """Chunk tags of ``[start, end)`` of an upload copy (empty when not tagging)."""
        if self.writer is None or end <= start:
            return []
        ck = ChunkKey(dk)
        return await trio.to_thread.run_sync(tag_ciphertext, path, ck, start, end, limiter=limiter)

    async def tag_object(self, key: str, etag: str, dk: DataKey, size: int) -> list[bytes]:
        """Chunk tags of the object's body as COS holds it now (recovery only)."""
        tagger = ChunkTagger(ChunkKey(dk))
        for pos in range(0, size, _TAG_READ):
            end = min(size, pos + _TAG_READ)
            tagger.update(await self.store.get(key, pos, end, if_match=etag))
        return tagger.finish()

    async def seal(
        self, key: str, size: int, meta: Mapping[str, str], tags: list[bytes]
    ) -> dict[str, str]:
        """``meta`` with the tag fields of the object about to be stored at ``key``.

        A companion, when the tags do not fit, is stored first: an object is
        never in COS naming a companion that is not.
        """
        out = {k: v for k, v in meta.items() if k not in TAG_FIELDS}
        if self.writer is None:
            return out
        sealed = seal_tags(
            self.writer,
            key=key,
            size=size,
            metadata=out,
            chunk_tags=ChunkTags(tags),
            attrs=attr_set(out),
        )
        if sealed.companion is not None:
            digest = companion_digest(sealed.fields, key=key)
            if digest is None:
                raise IntegrityError("sealed tags name no companion", key=key)
            await self.store.put(self.companion_key(digest), sealed.companion, {})
            self.stats.companions_written += 1
        out.update(sealed.fields)
        return out

    def own(
        self, key: str, size: int, meta: Mapping[str, str], tags: list[bytes]
    ) -> VerifiedContent | None:
        """The verified content of an object this mount just sealed with ``tags``."""
        if self.writer is None or OBJECT_TAG_FIELD not in meta:
            return None
        chunk_tags = ChunkTags(tags)
        companion = chunk_tags.companion_body() if companion_digest(meta, key=key) else None
        return open_tags(self.writer, key=key, size=size, metadata=meta, companion=companion)

    def with_attr_tag(self, key: str, meta: Mapping[str, str], *, is_dir: bool) -> dict[str, str]:
        """``meta`` after an attribute change: a new attribute tag, content tags kept.

        A file's attribute tag binds its object tag; a directory marker's and
        a special file's an empty one (``tagparts.bare``).  An untagged
        regular file stays untagged (nothing to bind to).
        """
        out = {k: v for k, v in meta.items() if k != ATTR_TAG_FIELD}
        if self.writer is None:
            return out
        otag = b""
        if not bare(out, is_dir=is_dir):
            text = out.get(OBJECT_TAG_FIELD)
            raw = None if text is None else b64url_decode(text)
            if raw is None or len(raw) != TAG_SIZE:
                return {k: v for k, v in out.items() if k not in CONTENT_TAG_FIELDS}
            otag = raw
            tk = self._tag_key(out, key)
        else:
            tk = self.writer
        atag = attribute_tag(tk, key=key, object_tag=otag, attrs=attr_set(out))
        out[ATTR_TAG_FIELD] = b64url_encode(atag)
        return out

    def retag(
        self, old_key: str, new_key: str, size: int, meta: Mapping[str, str]
    ) -> dict[str, str] | None:
        """Metadata for ``old_key``'s object copied to ``new_key`` (a rename).

        None when the object is untagged (it is copied as it is).  Raises
        IntegrityError when its own tag does not verify: an altered object
        is not re-tagged under a new name.  A special file (no object tag)
        keeps an attribute tag only if the old one verifies.
        """
        if OBJECT_TAG_FIELD not in meta:
            if ATTR_TAG_FIELD not in meta or not bare(meta, is_dir=False):
                return None
            if self.attrs_authentic(old_key, meta):
                return self.with_attr_tag(new_key, meta, is_dir=False)
            return {k: v for k, v in meta.items() if k != ATTR_TAG_FIELD}
        tk = self._tag_key(meta, old_key)
        fields = retag_fields(
            tk,
            tk,
            old_key=old_key,
            new_key=new_key,
            size=size,
            old_metadata=meta,
            new_metadata=meta,
            attrs=attr_set(meta),
        )
        return {**meta, **fields}

    def wrote(self, key: str, meta: Mapping[str, str], old: Mapping[str, str] | None) -> None:
        """The object with ``meta`` is now at ``key``, replacing one with ``old``."""
        text = meta.get(OBJECT_TAG_FIELD)
        if text is not None:
            self.journal.put_tags(key, self.journal.get_tags(key).seen(text))
        self.drop_companion(old, keep=meta)

    def removed(self, key: str, meta: Mapping[str, str] | None) -> None:
        """This mount deleted ``key``'s object: its companion goes too."""
        memory = self.journal.get_tags(key)
        if memory.current is not None:
            self.journal.put_tags(key, memory.gone())
        self.drop_companion(meta)

    def forget(self, key: str) -> None:
        """Accept an untagged object at ``key`` (``user.cosencfs.accept-untagged``)."""
        memory = self.journal.get_tags(key)
        if memory.current is not None:
            self.journal.put_tags(key, memory.gone())
        log.info("%r: an untagged object there is accepted from now on", key)

    def moved(self, key: str) -> None:
        """The object at ``key`` was renamed away (its companion now serves the new key)."""
        memory = self.journal.get_tags(key)
        if memory.current is not None:
            self.journal.put_tags(key, memory.gone())

    def drop_companion(
        self, meta: Mapping[str, str] | None, keep: Mapping[str, str] | None = None
    ) -> None:
        if meta is None:
            return
        try:
            digest = companion_digest(meta)
            kept = companion_digest(keep) if keep is not None else None
        except IntegrityError:
            return  # a malformed reference names nothing of ours
        if digest is not None and digest != kept:
            self.deleter.queue(self.companion_key(digest))

    # -- reading ---------------------------------------------------------------

    async def verify(self, key: str, size: int, meta: Mapping[str, str]) -> VerifiedContent | None:
        """The verified tags of the object at ``key``; None: untagged, read as before.

        Raises IntegrityError when its tags fail, when it is untagged and
        must not be (``--require-integrity``, or this mount knows it tagged),
        or when it is a version this mount saw replaced (rollback).
        """
        memory = self.journal.get_tags(key)
        try:
            if OBJECT_TAG_FIELD not in meta:
                if self.require:
                    raise IntegrityError("untagged object refused (--require-integrity)", key=key)
                if memory.current is not None:
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
            # Read again after the companion's GET: check and update with no await between.
            memory = self.journal.get_tags(key)
            if tag in memory.older:
                raise IntegrityError(
                    "an older version of the object, replaced since (rollback): refused", key=key
                )
        except IntegrityError:
            self.stats.objects_refused += 1
            raise
        if memory.current != tag:
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
        dropped = (META_MODE, META_UID, META_GID, META_MTIME, META_RDEV)
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
