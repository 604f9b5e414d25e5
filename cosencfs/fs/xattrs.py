"""Extended attributes: ``user.*`` sealed in object metadata, and the control names.

Rules (docs/semantics.md, "Extended attributes"):

- ``user.*`` on regular files and directories (the kernel itself refuses
  them on symlinks, fifos, sockets and devices: EPERM to set, ENODATA to
  get).  All of an object's attributes are one AES-GCM sealed field,
  ``x-cos-meta-cosencfs-xattrs`` (cosencfs/crypto/xattrseal.py), covered by
  the attribute tag.  A change is an attribute change like chmod: one
  server-side copy for a clean file, part of the upload for a dirty one, a
  marker PUT for a directory (a prefix directory without a marker gets
  one).  Beyond the metadata budget: ENOSPC.
- The mount's root has no object of its own: ENOTSUP to set or remove.
- ``security.*``, ``trusted.*``, ``system.*``: ENOTSUP to get, set or
  remove, as a Linux filesystem without a handler for the prefix answers:
  the mount enforces no labels and no ACLs, so storing them would promise
  what it does not do.  ENOTSUP on get (not ENODATA) also lets ``ls -l``
  stop asking: coreutils remembers "unsupported" per device for
  ``security.selinux`` and ``system.posix_acl_access``, but asks again for
  every file after ENODATA, and FUSE passes each ask to the daemon.
- ``user.cosencfs.*`` is the control channel (cosencfs/fs/control.py):
  ``format`` on any file, ``pid`` and ``stats`` on the root, setting
  ``sync`` on the root, ``accept-untagged`` on a file.  Never listed (tools
  copying attributes must not carry them), never stored; setting or
  removing any other name of the prefix gives EPERM.
- XATTR_CREATE / XATTR_REPLACE are checked by pyfuse3 through getxattr
  (EEXIST / ENODATA).

``Attrs.xattrs`` is None until first used: then the object's metadata at
``key_of(node)`` is authoritative, and :func:`loaded` opens it.  Whatever
moves a node to another key while it still has metadata there (a rename)
calls :func:`loaded` first, or re-seals the field (``MountTags.reseal_xattrs``).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from cosencfs import hardening
from cosencfs.crypto.integrity import (
    ATTR_TAG_FIELD,
    INLINE_BUDGET,
    OBJECT_TAG_FIELD,
    TAGS_REF_FIELD,
    metadata_bytes,
)
from cosencfs.crypto.xattrseal import XATTR_FIELD, sealed_length
from cosencfs.errors import FsError, NotFoundError
from cosencfs.fs.attrs import META_SIZE, NO_XATTRS, Kind, attrs_to_meta
from cosencfs.fs.context import FsContext
from cosencfs.fs.control import (
    XATTR_ACCEPT_UNTAGGED,
    XATTR_FORMAT,
    XATTR_PID,
    XATTR_STATS,
    XATTR_SYNC,
)
from cosencfs.fs.inode import ROOT_INO, Inode

if TYPE_CHECKING:
    from cosencfs.fs.core import Filesystem

USER = b"user."
RESERVED = b"user.cosencfs."
#: A tag field's value (22 characters; a digest's is 43, about twice).
_TAG_TEXT = "A" * 22


def _metadata(ctx: FsContext, node: Inode) -> Mapping[str, str] | None:
    """The metadata of ``node``'s object as known here ({}: no object; None: unknown)."""
    r = node.remote
    if r is not None and r.metadata is not None:
        return r.metadata
    if r is None and not (node.is_dir and node.as_dir.has_marker):
        return {}  # nothing in COS yet (a marker-less directory, a new file)
    # A directory's attributes may come from the journal without its metadata
    # on the inode; every marker has the same ETag, so Last-Modified decides.
    rec = ctx.journal.get_attrs(ctx.key_of(node))
    if rec is not None and (r is None or rec.matches(r.etag, r.size, r.last_modified)):
        return rec.meta
    return None


def _open(ctx: FsContext, node: Inode, meta: Mapping[str, str]) -> dict[bytes, bytes]:
    xs: dict[bytes, bytes] = {}
    if XATTR_FIELD in meta:
        xs = ctx.tags.open_xattrs(ctx.key_of(node), meta, is_dir=node.is_dir)
    node.attrs.xattrs = xs = xs or NO_XATTRS  # (shared, read-only: issue 18)
    return xs


def loaded(ctx: FsContext, node: Inode) -> dict[bytes, bytes]:
    """``node``'s extended attributes, opening its object's field on first use.

    A field that does not open (altered, another object's, a key this mount
    lacks) counts as none, with one log line, as failing attributes do.
    Callers that write the object call :func:`ensure_loaded` first: when the
    metadata is not known here this answers {} (without remembering it).
    """
    xs = node.attrs.xattrs
    if xs is not None:
        return xs
    meta = _metadata(ctx, node)
    return {} if meta is None else _open(ctx, node, meta)


async def ensure_loaded(ctx: FsContext, node: Inode) -> dict[bytes, bytes]:
    """:func:`loaded`, with a HEAD of the object when its metadata is not known here."""
    xs = node.attrs.xattrs
    if xs is not None:
        return xs
    meta = _metadata(ctx, node)
    if meta is None:
        key = ctx.key_of(node)
        try:
            async with ctx.head_limiter:
                info = await ctx.store.head(key)
        except NotFoundError:
            return {}  # gone: whoever writes it next writes none
        meta = info.metadata
        if node.attrs.xattrs is not None:
            return node.attrs.xattrs  # set while we asked: that is newer
    return _open(ctx, node, meta)


def fields(ctx: FsContext, node: Inode, key: str) -> dict[str, str]:
    """The xattr field of ``node``'s next object at ``key``, sealed afresh ({} when none)."""
    xs = loaded(ctx, node)
    if not xs:
        return {}
    return {XATTR_FIELD: ctx.tags.seal_xattrs(key, xs)}


def without_field(meta: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in meta.items() if k != XATTR_FIELD}


def _fits(ctx: FsContext, node: Inode, xs: dict[bytes, bytes]) -> bool:
    """Whether ``node``'s metadata with ``xs`` stays within the budget (format.md 12.8).

    Counted as the next write will store it: a clean object's own fields
    (chunk tags where they are now) for the copy; else the marker's fields,
    or an envelope with the tag fields of chunk tags in a companion, which
    the upload's placement makes true when they do not fit inline.
    """
    r = node.remote
    if r is not None and r.metadata is not None and not node.data_dirty:
        base = without_field(dict(r.metadata))
    elif node.is_dir:
        base = {ATTR_TAG_FIELD: _TAG_TEXT}
    else:
        base = {
            **ctx.tags.envelope_sample(),
            META_SIZE: "0" * 15,
            OBJECT_TAG_FIELD: _TAG_TEXT,
            ATTR_TAG_FIELD: _TAG_TEXT,
            TAGS_REF_FIELD: _TAG_TEXT * 2,
        }
    base.update(attrs_to_meta(node.attrs))
    used = metadata_bytes(base) + len("x-cos-meta-") + len(XATTR_FIELD) + sealed_length(xs)
    return used <= INLINE_BUDGET


async def getxattr(fs: Filesystem, ino: int, name: bytes) -> bytes:
    if name.startswith(RESERVED):
        return await _control_get(fs, ino, name)
    if not name.startswith(USER):
        raise FsError(errno.ENOTSUP, "only user.* extended attributes are stored")
    if ino == ROOT_INO:
        raise FsError(errno.ENODATA)
    node = fs.ns.inode(ino)
    await fs.attrs.ensure(node)
    value = (await ensure_loaded(fs.ctx, node)).get(name)
    if value is None:
        raise FsError(errno.ENODATA)
    return value


async def _control_get(fs: Filesystem, ino: int, name: bytes) -> bytes:
    if name == XATTR_FORMAT:
        return (await fs.object_format(ino)).encode()
    if ino == ROOT_INO:
        if name == XATTR_PID:
            return str(os.getpid()).encode()
        if name == XATTR_STATS:
            # What the kernel says now (prctl), not what was asked for at start.
            stats = {**fs.stats(), "process": hardening.current().as_dict()}
            return json.dumps(stats, sort_keys=True).encode()
    raise FsError(errno.ENODATA)


async def listxattr(fs: Filesystem, ino: int) -> list[bytes]:
    """The ``user.*`` names; never the control names (copies must not carry them)."""
    if ino == ROOT_INO:
        return []
    node = fs.ns.inode(ino)
    if not (node.is_dir or node.kind is Kind.FILE):
        return []
    await fs.attrs.ensure(node)
    return sorted(await ensure_loaded(fs.ctx, node))


async def setxattr(fs: Filesystem, ino: int, name: bytes, value: bytes) -> None:
    if name.startswith(RESERVED):
        await _control_set(fs, ino, name)
        return
    await _change(fs, ino, name, value)


async def removexattr(fs: Filesystem, ino: int, name: bytes) -> None:
    if name.startswith(RESERVED):
        raise FsError(errno.EPERM, "user.cosencfs.* names are the mount's control channel")
    await _change(fs, ino, name, None)


async def _control_set(fs: Filesystem, ino: int, name: bytes) -> None:
    if ino == ROOT_INO and name == XATTR_SYNC:
        await fs.sync_all()
        return
    if name == XATTR_ACCEPT_UNTAGGED:
        # The kernel let the caller write the file's xattrs: its writer vouches.
        node = fs.ns.inode(ino)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        fs.ctx.tags.forget(fs.ctx.key_of(node))
        return
    raise FsError(errno.EPERM, "user.cosencfs.* names are the mount's control channel")


async def _change(fs: Filesystem, ino: int, name: bytes, value: bytes | None) -> None:
    """Set (``value``) or remove (None) extended attribute ``name``."""
    if not name.startswith(USER):
        raise FsError(errno.ENOTSUP, "only user.* extended attributes are stored")
    if ino == ROOT_INO:
        raise FsError(errno.ENOTSUP, "the mount's root has no object to hold attributes")
    node = fs.ns.inode(ino)
    if not (node.is_dir or node.kind is Kind.FILE):
        # (The kernel refuses user.* on these before asking.)
        raise FsError(errno.EPERM)
    if not fs.ctx.tags.sealing_xattrs:
        raise FsError(errno.ENOTSUP, "no secret master key here to seal attributes with")
    await fs.attrs.ensure(node)
    await ensure_loaded(fs.ctx, node)
    # From here to the end no await: the check and the change are one step.
    xs = dict(loaded(fs.ctx, node))
    if value is None:
        if name not in xs:
            raise FsError(errno.ENODATA)
        del xs[name]
    else:
        xs[name] = value
        if not _fits(fs.ctx, node, xs):
            raise FsError(errno.ENOSPC, "extended attributes beyond the metadata budget")
    node.attrs.xattrs = xs
    node.attrs.ctime_ns = fs.ctx.now_ns()
    if node.unlinked:
        return  # kept in memory while it is open, as its other attributes
    node.meta_gen += 1
    fs.writeback.schedule(node)
    if node.data_dirty:
        # The upload carries them: the journal must too, so a crash keeps them.
        fs.records.record(node)
