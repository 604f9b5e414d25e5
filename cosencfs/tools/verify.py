"""fsck's integrity-tag checks: object, chunk and attribute tags, companions (format.md, 12).

For every object that opened with the key (``fsck.py`` did the HEAD and
the envelope), :meth:`TagCheck.check_object`:

- no ``cosencfs-tag`` field: **untagged** (a mount serves it unauthenticated
  unless ``--require-integrity``; whoever can write to the bucket can strip
  tags).  Counted always; a finding with ``--verify``.  An SDK envelope is
  untagged by nature (the format has no tags, and stripping a cosencfs
  envelope's own fields turns it into one), so it counts the same way;
- without ``--verify``, what metadata alone shows: the object tag (the
  companion reference stands for the digest it names, so no companion is
  fetched) and the attribute tag; no request;
- with ``--verify``: the companion (looked up under the prefix, then under
  every parent directory of the object), ``open_tags`` with the object's
  Content-Length, then the body in ranges of ``VERIFY_RANGE`` bytes (whole
  chunks) checked with ``verify_range`` and dropped, then the attribute tag.

With ``--verify``, directory markers get a HEAD and their attribute tag (an
empty object tag, under any master's tag key) is checked, and companions
that no listed object names are reported at the end.  Special files (fifos,
sockets, device nodes: empty objects whose mode says so) have their
attribute tag checked the same way from the HEAD fsck made anyway
(:meth:`TagCheck.check_special`).  Sealed extended attributes
(``cosencfs-xattrs``, format.md 13) must open under one of the keys given,
or they are an ``attributes`` finding: the mount drops them.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import trio

from cosencfs.crypto.ctr import DataKey
from cosencfs.crypto.envelope import EnvelopeCodec, ObjectFormat
from cosencfs.crypto.integrity import (
    ATTR_TAG_FIELD,
    CHUNK_SIZE,
    DIGEST_SIZE,
    OBJECT_TAG_FIELD,
    TAG_SIZE,
    ChunkKey,
    TagKey,
    VerifiedContent,
    attribute_tag,
    b64url_decode,
    b64url_encode,
    chunk_count,
    companion_digest,
    has_tags,
    object_tag_of_digest,
    open_tags,
    sealed_envelope,
    verify_attributes,
)
from cosencfs.crypto.xattrseal import XATTR_FIELD, XattrKey, open_any
from cosencfs.errors import (
    CryptoError,
    IntegrityError,
    NotFoundError,
    PreconditionFailedError,
    StoreError,
)
from cosencfs.fs.attrs import META_GID, META_MODE, META_MTIME, META_UID
from cosencfs.fs.tagcheck import COMPANION_DIR, attr_set
from cosencfs.store.base import ObjectInfo, ObjectStore
from cosencfs.tools.findings import Category, Finding, FsckStats, head_or_report

log = logging.getLogger(__name__)

__all__ = ["VERIFY_RANGE", "TagCheck", "in_companion_area"]

#: Body bytes fetched per GET with ``--verify``: whole chunks, so each range
#: verifies on its own; at most ``concurrency`` of them are held at once.
VERIFY_RANGE = 64 * CHUNK_SIZE  # 4 MiB
_ATTR_FIELDS = (META_MODE, META_UID, META_GID, META_MTIME)
_DEFAULTS = "the mount applies its default attributes; the content stays readable"
_EIO = "the mount refuses it (EIO)"


def in_companion_area(rel_key: str) -> bool:
    """Whether a key (below the prefix) lies in a ``.cosencfs-tags/`` directory."""
    return rel_key.startswith(COMPANION_DIR + "/") or f"/{COMPANION_DIR}/" in rel_key


def _parent_dirs(key: str) -> Iterator[str]:
    """``a/b/`` then ``a/`` then ``""`` for ``a/b/c``."""
    pos = len(key)
    while (pos := key.rfind("/", 0, pos)) >= 0:
        yield key[: pos + 1]
    yield ""


def _message(exc: IntegrityError) -> str:
    return str(exc.args[0]) if exc.args else type(exc).__name__


@dataclass(slots=True)
class TagCheck:
    """The tag checks of one fsck run; findings go to ``add``, counts to ``stats``."""

    store: ObjectStore
    codec: EnvelopeCodec
    add: Callable[[Finding], None]
    stats: FsckStats
    prefix: str = ""
    verify: bool = False
    #: Companions younger than this (seconds) are not reported: a mount may be
    #: about to store the object that names it (fsck's ``--orphan-age``).
    orphan_age: float = 0.0
    delete_orphans: bool = False
    now: Callable[[], float] = time.time
    #: Companions listed: key -> (digest or None for a name that is not one, Last-Modified).
    _companions: dict[str, tuple[bytes | None, float]] = field(default_factory=dict)
    #: Digests named by a listed object's ``cosencfs-tags-ref``.
    _referenced: set[bytes] = field(default_factory=set)
    _keys: list[TagKey] = field(default_factory=list)
    _xkeys: list[XattrKey] = field(default_factory=list)

    def __post_init__(self) -> None:
        for master in self.codec.masters:
            try:
                self._keys.append(TagKey.from_master(master))
            except CryptoError:
                pass  # a public-only RSA key has no tag key
        self._xkeys = [XattrKey(tk) for tk in self._keys]

    def _xattrs_problem(self, key: str, meta: Mapping[str, str]) -> str | None:
        """Why the object's sealed extended attributes do not open, or None."""
        text = meta.get(XATTR_FIELD)
        if text is None:
            return None
        try:
            open_any(self._xkeys, key, text)
        except IntegrityError as exc:
            return f"extended attributes: {_message(exc)}: the mount drops them"
        return None

    # ------------------------------------------------------------------ listing order

    def listed_companion(self, info: ObjectInfo) -> None:
        """A key in a ``.cosencfs-tags/`` directory: not a file; remembered for orphans."""
        self.stats.tags.companions += 1
        key = info.key
        if not self.verify or key.endswith("/"):
            return
        parent, _, name = key.rpartition("/")
        digest = b64url_decode(name) if parent.endswith(COMPANION_DIR) else None
        if digest is not None and len(digest) != DIGEST_SIZE:
            digest = None
        self._companions[key] = (digest, info.last_modified)

    async def report_orphans(self) -> None:
        """``orphan-companion`` for each listed companion no listed object names.

        Only after a complete walk (every reference seen), and only companions
        older than ``orphan_age``; with ``delete_orphans`` the real companions
        among them (not other names) are deleted.
        """
        now = self.now()
        for key, (digest, modified) in sorted(self._companions.items()):
            if digest in self._referenced:
                continue
            age = now - modified if modified > 0 else float("inf")
            if self.orphan_age > 0 and age < self.orphan_age:
                continue
            action = ""
            if digest is None:
                detail = (
                    f"not a companion (a base64url SHA-256 digest directly under {COMPANION_DIR}/) "
                    "in the directory the mount keeps for itself; nothing refers to it"
                )
            else:
                detail = (
                    "companion object that no listed object refers to (left by an overwrite or "
                    "delete that did not finish, or by another tool): deleting it is safe once "
                    "no mount is writing to the bucket (a mount stores a companion just before "
                    "its object; a rename during the check can hide its referrer)"
                )
                if self.delete_orphans:
                    action = await self._delete(key)
            self.add(Finding(Category.ORPHAN_COMPANION, key, detail, action=action))

    async def _delete(self, key: str) -> str:
        try:
            await self.store.delete(key)
        except StoreError as exc:
            return f"delete failed: {exc}"
        self.stats.tags.companions_deleted += 1
        return "deleted"

    # ------------------------------------------------------------------ objects

    async def check_object(
        self, info: ObjectInfo, meta: Mapping[str, str], dk: DataKey, fmt: ObjectFormat
    ) -> None:
        """The tags of an object whose envelope opened (``dk``), as its HEAD gave them."""
        key = info.key
        if OBJECT_TAG_FIELD not in meta:
            self._untagged(key, fmt, partial=has_tags(meta))
            return
        try:
            digest = companion_digest(meta, key=key)
            if digest is not None:
                self._referenced.add(digest)
            tk = TagKey.for_object(meta, self.codec.masters, key=key)
        except (IntegrityError, CryptoError) as exc:
            self._failed(key, f"tagged, but {exc.args[0] if exc.args else exc}: {_EIO}")
            return
        if not self.verify:
            self._from_metadata(tk, info, meta, digest)
            return
        companion = None
        if digest is not None:
            companion = await self._companion(key, digest)
            if companion is None:
                return
        try:
            verified = open_tags(tk, key=key, size=info.size, metadata=meta, companion=companion)
        except IntegrityError as exc:
            self._failed(key, f"{_message(exc)}: {_EIO}")
            return
        if not await self._verify_body(info, dk, verified):
            return
        self._attributes(tk, key, verified.object_tag, meta)
        self.stats.tags.verified += 1

    def _from_metadata(
        self, tk: TagKey, info: ObjectInfo, meta: Mapping[str, str], digest: bytes | None
    ) -> None:
        """Object and attribute tags without a request (no body, no companion)."""
        key = info.key
        try:
            if digest is None:  # chunk tags inline, or none: the whole check
                otag = open_tags(tk, key=key, size=info.size, metadata=meta).object_tag
            else:  # the reference is the digest the object tag binds
                tag = b64url_decode(meta[OBJECT_TAG_FIELD])
                if tag is None or len(tag) != TAG_SIZE:
                    raise IntegrityError(f"{OBJECT_TAG_FIELD} is malformed", key=key)
                env = sealed_envelope(meta, key=key)
                want = object_tag_of_digest(
                    tk, key=key, size=info.size, envelope=env, digest=digest
                )
                if not hmac.compare_digest(want, tag):
                    raise IntegrityError(
                        "object tag does not verify (body size, name, envelope or chunk tags "
                        "altered)",
                        key=key,
                    )
                otag = tag
        except (IntegrityError, CryptoError) as exc:
            self._failed(key, f"{exc.args[0] if exc.args else exc}: {_EIO}")
            return
        self._attributes(tk, key, otag, meta)
        self.stats.tags.metadata_checked += 1

    async def _companion(self, key: str, digest: bytes) -> bytes | None:
        """The companion's body; None (and a finding) when it cannot be had."""
        name = f"{COMPANION_DIR}/{b64url_encode(digest)}"
        places = [self.prefix, *(d for d in _parent_dirs(key) if d != self.prefix)]
        for place in places:
            try:
                return await self.store.get(place + name)
            except NotFoundError:
                continue
            except StoreError as exc:
                self.add(Finding(Category.ERROR, key, f"GET of its companion failed: {exc}"))
                return None
        self._failed(
            key,
            f"the companion object holding the chunk tags ({self.prefix}{name}) is missing: {_EIO}",
        )
        return None

    async def _verify_body(self, info: ObjectInfo, dk: DataKey, verified: VerifiedContent) -> bool:
        """Every chunk of the body against ``verified``, one range at a time."""
        key, size = info.key, info.size
        ck = ChunkKey(dk)
        bad: list[int] = []
        for start in range(0, size, VERIFY_RANGE):
            end = min(size, start + VERIFY_RANGE)
            try:
                data = await self.store.get(key, start, end, if_match=info.etag)
            except (NotFoundError, PreconditionFailedError):
                self.stats.vanished += 1  # deleted or replaced since the HEAD
                return False
            except StoreError as exc:
                self.add(Finding(Category.ERROR, key, f"GET of bytes {start}-{end} failed: {exc}"))
                return False
            first = start // CHUNK_SIZE
            try:
                await trio.to_thread.run_sync(verified.verify_range, ck, first, data)
            except IntegrityError:
                bad += await trio.to_thread.run_sync(_failing_chunks, verified, ck, first, data)
            del data
        if not bad:
            self.stats.tags.bytes_verified += size
            return True
        first_bad = bad[0]
        self._failed(
            key,
            f"chunk {first_bad} (bytes {first_bad * CHUNK_SIZE}-"
            f"{min(size, (first_bad + 1) * CHUNK_SIZE) - 1}) does not verify (body altered); "
            f"{len(bad)} of {chunk_count(size)} chunks fail: reads of them give EIO",
            chunk=first_bad,
        )
        return False

    def _attributes(self, tk: TagKey, key: str, otag: bytes, meta: Mapping[str, str]) -> None:
        text = meta.get(ATTR_TAG_FIELD)
        tag = None if text is None else b64url_decode(text)
        try:
            if tag is None or len(tag) != TAG_SIZE:
                raise IntegrityError(f"{ATTR_TAG_FIELD} missing or malformed", key=key)
            try:
                attrs = attr_set(meta)
            except ValueError:
                raise IntegrityError("attributes do not parse", key=key) from None
            verify_attributes(tk, key=key, object_tag=otag, attrs=attrs, tag=tag)
        except IntegrityError as exc:
            self.add(Finding(Category.ATTRIBUTES, key, f"{_message(exc)}: {_DEFAULTS}"))
            return
        problem = self._xattrs_problem(key, meta)
        if problem is not None:
            self.add(Finding(Category.ATTRIBUTES, key, problem))

    def _failed(self, key: str, detail: str, chunk: int | None = None) -> None:
        self.stats.tags.failed += 1
        self.add(Finding(Category.INTEGRITY, key, detail, chunk=chunk))

    def _untagged(self, key: str, fmt: ObjectFormat, *, partial: bool) -> None:
        self.stats.tags.untagged += 1
        if not self.verify:
            return
        if fmt is ObjectFormat.SDK:
            what = (
                "SDK envelope, which carries no integrity tags (written by the COS SDK, or a "
                "cosencfs object whose envelope fields and tags were stripped)"
            )
        elif partial:
            what = "tag fields but no object tag (cosencfs-tag stripped?)"
        else:
            what = (
                "no integrity tags (written before tags existed, by a public-key-only mount, "
                "or stripped)"
            )
        self.add(
            Finding(
                Category.UNTAGGED,
                key,
                f"{what}: the mount serves it unauthenticated unless --require-integrity; "
                "whoever can write to the bucket can strip tags and then alter the body. "
                "Rewrite it through a mount to tag it",
            )
        )

    # ------------------------------------------------------------------ markers

    async def check_marker(self, key: str) -> None:
        """A directory marker's attribute tag (``--verify``; it costs a HEAD)."""
        info = await head_or_report(self.store, key, self.stats, self.add)
        if info is None:
            return
        self._check_bare(key, info.metadata, "directory marker")

    def check_special(self, key: str, meta: Mapping[str, str], what: str) -> None:
        """A special file's attribute tag, from the HEAD fsck made (no request).

        Without a valid one a ``-o dev`` mount does not serve a device node
        as a device (docs/security.md).  Untagged: counted, a finding with
        ``--verify`` (as for any object).
        """
        if ATTR_TAG_FIELD not in meta:
            self.stats.tags.untagged += 1
            if self.verify:
                self.add(
                    Finding(
                        Category.UNTAGGED,
                        key,
                        f"{what} without an attribute tag: the mount applies its attributes "
                        "unauthenticated unless --require-integrity",
                    )
                )
            return
        self._check_bare(key, meta, what)

    def _check_bare(self, key: str, meta: Mapping[str, str], what: str) -> None:
        """The attribute tag of an object without content (an empty object tag)."""
        text = meta.get(ATTR_TAG_FIELD)
        if text is None:
            if any(f in meta for f in _ATTR_FIELDS):
                self.stats.tags.untagged += 1
                self.add(
                    Finding(
                        Category.UNTAGGED,
                        key,
                        f"{what} with attributes but no attribute tag: the mount "
                        "applies them unauthenticated unless --require-integrity",
                    )
                )
            return
        tag = b64url_decode(text)
        if tag is None or len(tag) != TAG_SIZE:
            problem = f"{ATTR_TAG_FIELD} malformed"
        else:
            try:
                attrs = attr_set(meta)
            except ValueError:
                problem = "attributes do not parse"
            else:
                for tk in self._keys:
                    mine = attribute_tag(tk, key=key, object_tag=b"", attrs=attrs)
                    if hmac.compare_digest(mine, tag):
                        sealed = self._xattrs_problem(key, meta)
                        if sealed is not None:
                            self.add(Finding(Category.ATTRIBUTES, key, f"{what}: {sealed}"))
                        return
                problem = (
                    "attribute tag does not verify (attributes altered, or tagged under a "
                    "master key not given here)"
                )
        self.add(Finding(Category.ATTRIBUTES, key, f"{what}: {problem}: {_DEFAULTS}"))


def _failing_chunks(verified: VerifiedContent, ck: ChunkKey, first: int, data: bytes) -> list[int]:
    """The chunks of a range that fail, one by one (after ``verify_range`` failed)."""
    bad = []
    view = memoryview(data)
    pos, index = 0, first
    while pos < len(view) and index < len(verified.chunk_tags):
        n = min(CHUNK_SIZE, verified.size - index * CHUNK_SIZE)
        try:
            verified.verify_chunk(ck, index, view[pos : pos + n])
        except IntegrityError:
            bad.append(index)
        pos += n
        index += 1
    if pos < len(view):  # more bytes than the object has chunks for
        bad.append(index)
    return bad or [first]
