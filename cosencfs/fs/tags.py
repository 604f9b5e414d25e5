"""The mount's integrity tags: what it writes carries them, what it reads must verify.

docs/format.md, section 12, is the construction; this module is the
mount's policy around it:

- **writing**: every object the mount writes under a cosencfs envelope gets
  chunk tags (computed from the upload copy's ciphertext), an object tag
  and an attribute tag; large files' chunk tags go to a companion object
  ``<prefix>.cosencfs-tags/<D>`` (content-addressed, so a rename moves no
  companion), stored *before* the object that names it;
- **reading** (cosencfs/fs/tagcheck.py, which ``MountTags`` extends): an
  object's tags are verified before any byte of it is served
  (:meth:`TagChecker.verify` gives the ``VerifiedContent`` the
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

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping

import trio

from cosencfs.cache.journal import Journal
from cosencfs.crypto.ctr import DataKey
from cosencfs.crypto.envelope import KID_FIELD, EnvelopeCodec
from cosencfs.crypto.integrity import (
    ATTR_TAG_FIELD,
    CONTENT_TAG_FIELDS,
    OBJECT_TAG_FIELD,
    TAG_FIELDS,
    TAG_SIZE,
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
    tag_body,
)
from cosencfs.crypto.xattrseal import XATTR_FIELD, XattrKey, open_any
from cosencfs.errors import ConfigError, CryptoError, IntegrityError
from cosencfs.fs.attrs import META_GID, META_MODE, META_MTIME, META_RDEV, META_UID
from cosencfs.fs.deleter import Deleter
from cosencfs.fs.tagcheck import TagChecker, attr_set
from cosencfs.fs.tagparts import bare, tag_ciphertext
from cosencfs.store.base import ObjectStore

log = logging.getLogger(__name__)

#: Upload copies up to this size are tagged on the event loop, not in a thread.
INLINE_TAG = 64 * 1024

#: Ciphertext read per step when tagging an upload copy.
_TAG_READ = 4 * 1024 * 1024

#: Attribute tags this mount sealed, remembered for ``attrs_authentic`` (the
#: newest; ~250 bytes each, 0.5 MiB at most): a directory index rewritten after a burst of
#: new files checks each one's, which this mount has just computed.
OWN_ATTRS_MAX = 2048

#: What an attribute check reads from metadata: the tags, the envelope's key
#: id (which tag key) and every field ``attr_set`` covers.
_ATTR_INPUTS = (
    ATTR_TAG_FIELD,
    OBJECT_TAG_FIELD,
    KID_FIELD,
    META_MODE,
    META_UID,
    META_GID,
    META_MTIME,
    META_RDEV,
    XATTR_FIELD,
)


def _attr_inputs(key: str, meta: Mapping[str, str]) -> bytes:
    """A digest of everything an attribute check of ``meta`` at ``key`` depends on."""
    text = repr((key, tuple(meta.get(f) for f in _ATTR_INPUTS)))
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).digest()


def read_copy(path: str, size: int) -> bytes:
    """The first ``size`` bytes of a cache file (a small upload copy, produced: sealed)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    if len(data) != size:
        raise OSError(f"cache file {path} is short: {len(data)} of {size} bytes")
    return data


class MountTags(TagChecker):
    """The mount's integrity tags: sealing what it writes (and the checks it inherits)."""

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
        keys: dict[str, TagKey] = {}
        for master in codec.masters:
            try:
                keys[master.key_id] = TagKey.from_master(master)
            except CryptoError:
                pass  # a public-only RSA key: cannot tag, cannot read either
        super().__init__(store, journal, keys, prefix=prefix, require=require)
        self.deleter = deleter
        mine = keys.get(codec.key_id)
        if mine is None and require:
            raise ConfigError(
                "--require-integrity needs the secret master key (an RSA private key): "
                "a public-key-only mount cannot tag what it writes"
            )
        if mine is None:
            log.warning("the master key has no secret half here: objects are written untagged")
        #: None: write untagged objects (public-only key, or the benchmark's switch).
        self.writer = mine if write else None
        # Extended attributes: sealed under the mount's own master, opened
        # under any the mount holds (format.md, 13).
        self._xkeys = [XattrKey(tk) for tk in keys.values()]
        self._xwriter = None if mine is None else XattrKey(mine)
        self._codec = codec
        self._envelope: dict[str, str] | None = None
        #: key -> ``_attr_inputs`` of the file metadata this mount last sealed there.
        self._own_attrs: OrderedDict[str, bytes] = OrderedDict()

    # -- writing ---------------------------------------------------------------

    @property
    def writing(self) -> bool:
        return self.writer is not None

    async def tag_copy(
        self, path: str, dk: DataKey, start: int, end: int, limiter: trio.CapacityLimiter
    ) -> list[bytes]:
        """Chunk tags of ``[start, end)`` of an upload copy (empty when not tagging)."""
        if self.writer is None or end <= start:
            return []
        ck = ChunkKey(dk)
        if end - start <= INLINE_TAG:
            # A page-cache read and one HMAC of at most a chunk take less
            # than the hop to a worker thread and back (~6 % of the daemon's
            # CPU per small file created, py-spy of small_create).
            return tag_ciphertext(path, ck, start, end)
        return await trio.to_thread.run_sync(tag_ciphertext, path, ck, start, end, limiter=limiter)

    def small_copy(self, path: str, dk: DataKey, size: int) -> tuple[bytes, list[bytes]]:
        """A small upload copy's ciphertext (at most ``INLINE_TAG`` bytes), read once,
        and its chunk tags (none when not tagging): the commit sends those
        bytes as the PUT's body, instead of reading the file a second time."""
        body = read_copy(path, size)
        if self.writer is None or not body:
            return body, []
        return body, list(tag_body(ChunkKey(dk), body))

    def chunk_key(self, dk: DataKey) -> ChunkKey | None:
        """The chunk-tag key of the object under ``dk``; None when not tagging."""
        return None if self.writer is None else ChunkKey(dk)

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
        return (await self.seal_own(key, size, meta, tags))[0]

    async def seal_own(
        self, key: str, size: int, meta: Mapping[str, str], tags: list[bytes]
    ) -> tuple[dict[str, str], VerifiedContent | None]:
        """``seal``, and the verified content of the object sealed (None: untagged).

        ``tags`` must be the chunk tags this mount computed from the upload
        copy it is about to send (``tag_copy``, ``small_copy``): the content is verified by
        construction (crypto/objecttags.py, ``seal_object``), so the commit
        does not open the tags it just made (``own``).
        """
        out = {k: v for k, v in meta.items() if k not in TAG_FIELDS}
        if self.writer is None:
            return out, None
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
        self._sealed_attrs(key, out)
        return out, sealed.content

    def _sealed_attrs(self, key: str, meta: Mapping[str, str]) -> None:
        """This mount just computed the attribute tag in ``meta`` (a file's, not bare)."""
        self._own_attrs[key] = _attr_inputs(key, meta)
        self._own_attrs.move_to_end(key)
        if len(self._own_attrs) > OWN_ATTRS_MAX:
            self._own_attrs.popitem(last=False)

    def attrs_authentic(self, key: str, meta: Mapping[str, str], *, is_dir: bool = False) -> bool:
        """As ``TagChecker.attrs_authentic``, without the MAC for metadata this mount
        sealed itself: the same tags, key id and attribute fields at the same key
        are the same inputs to the same check, whose answer was yes when it
        computed them.  Anything else (another writer's, an altered field) is
        checked in full."""
        if not is_dir and OBJECT_TAG_FIELD in meta:
            own = self._own_attrs.get(key)
            if own is not None and own == _attr_inputs(key, meta):
                return True
        return super().attrs_authentic(key, meta, is_dir=is_dir)

    def own(
        self, key: str, size: int, meta: Mapping[str, str], tags: list[bytes]
    ) -> VerifiedContent | None:
        """The verified content of an object this mount just sealed with ``tags``
        (a streamed upload's, whose metadata was sealed elsewhere: its tags are opened)."""
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
        if otag and tk is self.writer:
            self._sealed_attrs(key, out)
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
            self.journal.saw_tag(key, text)  # (its memory read when written: batched)
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

    # -- extended attributes (format.md, 13) -------------------------------------

    @property
    def sealing_xattrs(self) -> bool:
        return self._xwriter is not None

    def seal_xattrs(self, key: str, xattrs: Mapping[bytes, bytes]) -> str:
        """The sealed field for ``xattrs`` on the object at ``key`` (a fresh nonce)."""
        if self._xwriter is None:
            raise CryptoError("no secret master key to seal extended attributes with")
        return self._xwriter.seal(key, xattrs)

    def open_xattrs(self, key: str, meta: Mapping[str, str], *, is_dir: bool) -> dict[bytes, bytes]:
        """The extended attributes of the object at ``key``; {} when they fail (logged)."""
        shown = self.attr_meta(key, meta, is_dir=is_dir)  # a failing attribute tag drops them
        text = shown.get(XATTR_FIELD)
        if text is None:
            return {}
        try:
            return open_any(self._xkeys, key, text)
        except IntegrityError as exc:
            self.stats.attribute_failures += 1
            log.error("%r: extended attributes dropped: %s", key, exc)
            return {}

    def reseal_xattrs(self, old_key: str, new_key: str, meta: Mapping[str, str]) -> dict[str, str]:
        """``meta`` of an object copied from ``old_key`` to ``new_key``, xattrs sealed for it.

        Their AAD binds the object key, so a rename opens and re-seals them
        (a fresh nonce) in the same copy; ones that do not open are dropped.
        """
        out = dict(meta)
        text = out.pop(XATTR_FIELD, None)
        if text is None or self._xwriter is None:
            return out
        try:
            xs = open_any(self._xkeys, old_key, text)
        except IntegrityError as exc:
            log.error("%r: extended attributes dropped in a rename: %s", old_key, exc)
            return out
        if xs:
            out[XATTR_FIELD] = self._xwriter.seal(new_key, xs)
        return out

    def envelope_sample(self) -> dict[str, str]:
        """An envelope of this mount's master key (its size is every envelope's)."""
        if self._envelope is None:
            self._envelope = self._codec.seal(DataKey.generate())
        return self._envelope

    # -- reading ---------------------------------------------------------------
