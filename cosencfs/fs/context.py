"""What every part of the filesystem layer shares: options, store, cache, inodes."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from cosencfs.cache.manager import CacheManager
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.fs.attrs import Attrs, Defaults, Kind
from cosencfs.fs.deleter import Deleter
from cosencfs.fs.inode import Inode, InodeTable
from cosencfs.fs.names import check_key, normalize_prefix
from cosencfs.fs.partjob import PartBuffers
from cosencfs.fs.tags import MountTags
from cosencfs.store.base import ObjectStore

MIB = 1024 * 1024


@dataclass(slots=True, frozen=True)
class FsOptions:
    """Tunables of one mount (see docs/semantics.md for what each means)."""

    prefix: str = ""
    defaults: Defaults = field(default_factory=lambda: Defaults(uid=0, gid=0))
    #: A directory listing is reused this long before COS is listed again.
    dir_ttl: float = 60.0
    #: How long the kernel may cache names and attributes without asking.
    entry_timeout: float = 10.0
    attr_timeout: float = 10.0
    #: open() skips the revalidating HEAD if the file was validated this recently.
    open_revalidate: float = 0.0
    #: Upload a closed dirty file this long after its last change.
    writeback_delay: float = 1.0
    #: Upload a file still open for writing once it has been dirty this long.
    max_dirty_age: float = 60.0
    #: At most this many uploads at once; None: as many as the upload window
    #: finds useful (cosencfs/fs/window.py), up to ``connections``.
    upload_workers: int | None = None
    #: The store's connection pool (``network.concurrency``): the upload
    #: window's bound.
    connections: int = 16
    head_concurrency: int = 32
    #: Files up to this size go up in one PUT; larger ones in parallel parts.
    single_put_max: int = 16 * MIB
    part_concurrency: int = 8
    #: Upload parts of a large file while it is still being written.
    stream_uploads: bool = True
    readahead_min: int = 1 * MIB
    readahead_max: int = 32 * MIB
    #: Serve objects that have a body but no encryption envelope (buckets
    #: shared with cosfs); refused by default (docs/security.md).
    allow_plaintext: bool = False
    #: Keep setuid/setgid bits from x-cos-meta-mode; dropped by default.
    trust_metadata_modes: bool = False
    #: The mount is ``-o dev``: device nodes would be live, so they are refused.
    devices: bool = False
    #: Refuse every object without integrity tags (docs/format.md, 12.10).
    require_integrity: bool = False
    #: Write integrity tags; off only in the benchmark that measures their cost.
    write_tags: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", normalize_prefix(self.prefix))


async def _nothing(ino: int) -> None:
    return None


class FsContext:
    def __init__(
        self,
        store: ObjectStore,
        codec: EnvelopeCodec,
        cache: CacheManager,
        options: FsOptions,
    ) -> None:
        self.store = store
        self.codec = codec
        self.cache = cache
        self.journal = cache.journal
        self.options = options
        now = time.time_ns()
        d = options.defaults
        self.table = InodeTable(Attrs(Kind.DIR.type_bits | d.dir_mode, d.uid, d.gid, now, now, now))
        self.nursery: trio.Nursery | None = None
        #: Set by the FUSE adapter: tell the kernel a name or inode changed.
        self.invalidate_entry: Callable[[int, str], None] = lambda ino, name: None
        self.invalidate_inode: Callable[[int], None] = lambda ino: None
        #: Forget the kernel's cached attributes of an inode, and wait until done.
        self.invalidate_attrs: Callable[[int], Awaitable[None]] = _nothing
        self.head_limiter = trio.CapacityLimiter(options.head_concurrency)
        #: Memory for streamed parts on their way up (cosencfs/fs/partjob.py).
        self.part_buffers = PartBuffers()
        self.deleter = Deleter(store, cache.journal)
        self.tags = MountTags(
            store,
            codec,
            cache.journal,
            self.deleter,
            prefix=options.prefix,
            require=options.require_integrity,
            write=options.write_tags,
        )

    def key_of(self, node: Inode) -> str:
        """The object key of a file, or the marker key of a directory."""
        path = "/".join(node.path_parts())
        if node.is_dir:
            return self.options.prefix + path + "/" if path else self.options.prefix
        return check_key(self.options.prefix + path)

    def child_key(self, parent: Inode, name: str, *, is_dir: bool) -> str:
        base = self.key_of(parent)
        return check_key(base + name + ("/" if is_dir else ""))

    @staticmethod
    def now_ns() -> int:
        return time.time_ns()

    def spawn(self, fn: Callable[..., object], *args: object) -> None:
        if self.nursery is None:
            raise RuntimeError("filesystem not started: no nursery to run background work in")
        self.nursery.start_soon(fn, *args)  # type: ignore[arg-type]
