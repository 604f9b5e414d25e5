"""Bucket check: does every object open with the key, and can the mount show it?

For every object under the prefix, one HEAD (listings carry no metadata) and
``EnvelopeCodec.open`` (which verifies the key-check value of cosencfs
envelopes); in listing order, without requests, the checks on names; at the
end one listing of multipart uploads.  Findings (``Category``):

``plain``             no envelope: stored unencrypted
``foreign``           envelope of the Java/Go COS SDK (unreadable by this format)
``damaged``           envelope present but unusable, or its key check fails
``wrong-key``         written under another master key
``unreachable-name``  a key the mount cannot show (empty, ``.``/``..``,
                      over-long, control-character or non-UTF-8 component)
``name-clash``        a file ``x`` next to a directory ``x/``: the mount
                      shows the directory, the file is hidden
``size``              a size no file of that kind can have: a directory
                      marker ``x/`` with a body, a symlink with an empty or
                      over-long (> 4095 bytes) target (the mount refuses it);
                      the CTR body has no padding or tag, so any file size
                      fits an envelope (0 bytes included)
``mode``              ``x-cos-meta-mode`` the mount does not take as it is:
                      setuid/setgid bits (dropped unless
                      ``--trust-metadata-modes``), a device node (an inert
                      name on nodev mounts, refused on ``-o dev``), an
                      unknown file type (refused)
``orphan-upload``     a multipart upload older than ``orphan_age`` seconds
``untagged``          (``verify``) no integrity tags: served unauthenticated
``integrity``         object or chunk tags fail, or the companion is missing
``attributes``        the attribute tag fails: default attributes apply
``orphan-companion``  (``verify``) a companion no listed object names, older
                      than ``orphan_age`` (deleted with ``delete_orphans``)
``error``             the object could not be checked (HEAD or GET failed)

The tag checks are ``verify.py``: without ``verify`` they use metadata
only (no request); with it every body is fetched and verified chunk by chunk.
Keys in a ``.cosencfs-tags/`` directory are companions, not files.

SDK envelopes with the ``aes-ctr`` wrap carry no key check: they "open" with
any AES key.  They are counted as ``unverified``, not as findings.
"""

from __future__ import annotations

import base64
import binascii
import logging
import stat
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from cosencfs.crypto.envelope import (
    KEY_FIELD,
    EnvelopeCodec,
    ObjectFormat,
    inspect_envelope,
)
from cosencfs.errors import (
    CryptoError,
    ForeignFormatError,
    NotEncryptedError,
    StoreError,
    WrongKeyError,
)
from cosencfs.fs.names import INDEX_NAME, MAX_NAME_BYTES, RESERVED_NAMES
from cosencfs.fs.policy import (
    DEVICES,
    MAX_SYMLINK_TARGET,
    FileType,
    file_type,
    is_special,
    meta_mode,
)
from cosencfs.store.base import ObjectInfo, ObjectStore
from cosencfs.tools.findings import Category, Finding, FsckStats, head_or_report
from cosencfs.tools.progress import Progress
from cosencfs.tools.verify import TagCheck, in_companion_area
from cosencfs.tools.walk import walk_bucket

log = logging.getLogger(__name__)

__all__ = [
    "Category",
    "Finding",
    "Fsck",
    "FsckStats",
    "crypto_message",
    "name_problem",
    "unverifiable_sdk_envelope",
]

_AES_CTR_WRAPPED_KEY_BYTES = 32


def name_problem(relative_key: str) -> str | None:
    """Why the mount cannot show ``relative_key`` (a key below the prefix), or None."""
    parts = relative_key.split("/")
    if relative_key.endswith("/"):
        parts = parts[:-1]
    for part in parts:
        if not part:
            return "empty name component ('//' or a leading '/')"
        if part in (".", ".."):
            return f"{part!r} as a name component"
        try:
            raw = part.encode("utf-8")
        except UnicodeEncodeError:
            return "name component is not valid UTF-8"
        if len(raw) > MAX_NAME_BYTES:
            return f"name component of {len(raw)} bytes (the limit is {MAX_NAME_BYTES})"
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in part):
            return "control character in a name component"
        if part in RESERVED_NAMES:
            return f"{part!r} is a name the mount keeps for itself (it hides it)"
    return None


class Fsck:
    """One check of ``prefix``; findings go to ``report`` as they are found."""

    def __init__(
        self,
        store: ObjectStore,
        codec: EnvelopeCodec,
        *,
        report: Callable[[Finding], None],
        prefix: str = "",
        concurrency: int = 16,
        orphan_age: float = 24 * 3600.0,
        abort_orphans: bool = False,
        verify: bool = False,
        delete_orphans: bool = False,
        progress: Progress | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.codec = codec
        self.prefix = prefix
        self.concurrency = concurrency
        self.orphan_age = orphan_age
        self.abort_orphans = abort_orphans
        self.progress = progress or Progress("fsck", enabled=False)
        self.stats = FsckStats()
        self._report = report
        self._now = now
        self.verify = verify
        self.tags = TagCheck(
            store,
            codec,
            self._add,
            self.stats,
            prefix=prefix,
            verify=verify,
            orphan_age=orphan_age,
            delete_orphans=delete_orphans,
            now=now,
        )
        #: File keys that a later key may turn into a directory (see _check_clash).
        self._open_files: list[str] = []
        self._clashed: set[str] = set()

    async def run(self) -> FsckStats:
        try:
            await walk_bucket(
                self.store,
                self.prefix,
                self._check_object,
                concurrency=self.concurrency,
                progress=self.progress,
                triage=self._triage,
            )
        finally:
            self.stats.objects = self.progress.total  # also when interrupted
        await self.tags.report_orphans()  # only after a complete walk: it needs every reference
        await self._check_uploads()
        return self.stats

    def _add(self, finding: Finding) -> None:
        self.stats.findings[finding.category] += 1
        self._report(finding)

    # ------------------------------------------------------------------ listing order

    def _triage(self, info: ObjectInfo) -> bool:
        """Name, clash and marker checks, in key order; True if the object needs a HEAD."""
        key = info.key
        self.stats.bytes += info.size
        rel = key[len(self.prefix) :]
        self._check_clash(key)
        if not rel:
            self.stats.markers += 1  # the prefix's own marker
            return False
        if in_companion_area(rel):
            self.tags.listed_companion(info)
            return False
        if rel == INDEX_NAME or rel.endswith("/" + INDEX_NAME):
            return False  # a directory's attribute index (format.md 14): no file
        problem = name_problem(rel)
        if problem is not None:
            self._add(
                Finding(
                    Category.UNREACHABLE_NAME,
                    key,
                    f"{problem}: the mount cannot show it; reachable only by other tools",
                )
            )
        if key.endswith("/"):
            if info.size == 0:
                self.stats.markers += 1
                return self.verify  # a HEAD for its attribute tag
            self._add(
                Finding(
                    Category.SIZE,
                    key,
                    f"directory marker with a {info.size}-byte body: the mount shows a "
                    "directory, the body is unreachable",
                )
            )
            return False
        return True

    def _check_clash(self, key: str) -> None:
        """Report a file ``x`` when a key below ``x/`` exists.

        Listings are sorted, and every key starting with ``x/`` lies between
        ``x`` and ``x0`` ('0' follows '/'); all keys in between start with
        ``x``.  So a stack of the file keys that are prefixes of the current
        key (followed by a character <= '/') holds every candidate, and its
        depth is bounded by the key length, not the bucket size.
        """
        stack = self._open_files
        while stack:
            top = stack[-1]
            if key.startswith(top) and len(key) > len(top) and key[len(top)] <= "/":
                break
            stack.pop()
        for f in stack:
            if key[len(f)] == "/" and f not in self._clashed:
                self._clashed.add(f)
                self._add(
                    Finding(
                        Category.NAME_CLASH,
                        f,
                        f"a file and a directory ({f}/) of the same name: the mount shows the "
                        "directory, the file is reachable only by other tools",
                    )
                )
        # Only the innermost entries can be reported again; forget the rest.
        self._clashed.intersection_update(stack)
        if not key.endswith("/"):
            stack.append(key)

    # ------------------------------------------------------------------ per object

    async def _check_object(self, listed: ObjectInfo) -> None:
        try:
            if listed.key.endswith("/"):
                await self.tags.check_marker(listed.key)
            else:
                await self._check(listed.key)
        finally:
            self.progress.set_status(self.stats.status())

    async def _check(self, key: str) -> None:
        info = await head_or_report(self.store, key, self.stats, self._add)
        if info is None:
            return
        meta = dict(info.metadata)
        self._check_size(info, meta)
        self._check_mode(info.key, meta)
        if is_special(meta, info.size):
            # Metadata only, no envelope by design: not "plain" (fs/special.py).
            self.stats.special += 1
            self.tags.check_special(key, meta, file_type(meta_mode(meta)).value)
            return
        env = inspect_envelope(meta)
        try:
            dk = self.codec.open(meta, key=key)
        except NotEncryptedError:
            what = "an empty object" if info.size == 0 else f"{info.size} bytes"
            if info.size == 1:
                what = "1 byte"
            self._add(
                Finding(
                    Category.PLAIN,
                    key,
                    f"no client-side-encryption envelope: stored unencrypted ({what})",
                )
            )
            return
        except ForeignFormatError:
            self._add(Finding(Category.FOREIGN, key, env.reason))
            return
        except WrongKeyError as exc:
            self._add(Finding(Category.WRONG_KEY, key, crypto_message(exc)))
            return
        except CryptoError as exc:  # DamagedEnvelopeError, or anything else unopenable
            self._add(Finding(Category.DAMAGED, key, crypto_message(exc)))
            return
        self.stats.ok[env.format.value] += 1
        if env.format is ObjectFormat.SDK and unverifiable_sdk_envelope(meta, self.codec):
            self.stats.unverified += 1
        await self.tags.check_object(info, meta, dk, env.format)

    def _check_size(self, info: ObjectInfo, meta: Mapping[str, str]) -> None:
        if file_type(meta_mode(meta)) is not FileType.SYMLINK:
            return
        if info.size == 0:
            self._add(Finding(Category.SIZE, info.key, "symlink with an empty target"))
        elif info.size > MAX_SYMLINK_TARGET:
            self._add(
                Finding(
                    Category.SIZE,
                    info.key,
                    f"symlink target of {info.size} bytes (at most {MAX_SYMLINK_TARGET})",
                )
            )

    def _check_mode(self, key: str, meta: Mapping[str, str]) -> None:
        mode = meta_mode(meta)
        if mode is None:
            return
        ftype = file_type(mode)
        problems = []
        if mode & (stat.S_ISUID | stat.S_ISGID):
            problems.append(
                "setuid/setgid bits: the mount drops them (unless --trust-metadata-modes)"
            )
        if ftype in DEVICES:
            problems.append(
                f"{ftype.value}: inert on nodev mounts; a -o dev mount serves it as a device "
                "only when its attribute tag verifies"
            )
        elif ftype is FileType.UNKNOWN:
            problems.append(f"unknown file type {stat.S_IFMT(mode):#o}: the mount refuses it")
        if problems:
            self._add(Finding(Category.MODE, key, f"mode {mode:#o}: " + "; ".join(problems)))

    # ------------------------------------------------------------------ uploads

    async def _check_uploads(self) -> None:
        try:
            uploads = await self.store.list_uploads(self.prefix)
        except StoreError as exc:
            self._add(Finding(Category.ERROR, self.prefix, f"listing multipart uploads: {exc}"))
            return
        self.stats.uploads = len(uploads)
        now = self._now()
        for u in uploads:
            age = now - u.initiated if u.initiated > 0 else float("inf")
            if self.orphan_age > 0 and age < self.orphan_age:
                continue
            started = (
                datetime.fromtimestamp(u.initiated, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
                if u.initiated > 0
                else "at an unknown time"
            )
            hours = f", {age / 3600:.1f} h ago" if age != float("inf") else ""
            action = ""
            if self.abort_orphans:
                try:
                    await self.store.abort_multipart(u.key, u.upload_id)
                except StoreError as exc:
                    action = f"abort failed: {exc}"
                else:
                    action = "aborted"
                    self.stats.orphans_aborted += 1
            self._add(
                Finding(
                    Category.ORPHAN_UPLOAD,
                    u.key,
                    f"unfinished multipart upload started {started}{hours}; its parts are "
                    "billed as storage",
                    upload_id=u.upload_id,
                    action=action,
                )
            )


def crypto_message(exc: CryptoError) -> str:
    """The error's message without its ``key=...`` suffix (callers name the key)."""
    return str(exc.args[0]) if exc.args else type(exc).__name__


def unverifiable_sdk_envelope(meta: Mapping[str, str], codec: EnvelopeCodec) -> bool:
    """An SDK envelope with the SDK's AES wrap, opened by an AES key: nothing
    checks that the key is the right one (see docs/format.md, section 5)."""
    if codec.master.kind != "aes":
        return False
    value = next((v for k, v in meta.items() if k.lower() == KEY_FIELD), "")
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) == _AES_CTR_WRAPPED_KEY_BYTES
