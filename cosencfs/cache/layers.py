"""The dirty layers of a cache directory: made, reopened, retired, released.

Every :class:`~cosencfs.cache.dirtylog.DirtyLayer` in use is registered
here by id, so the cache knows the space its logs take and which files in
the data directory are live.  A layer's log file is deleted only when it is
*retired* and no reader pins it; *releasing* a chain closes its layers but
keeps their files, for the journal still names them (docs/concurrency.md,
"files and the journal").
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from cosencfs.cache.content import ObjectContent, Source
from cosencfs.cache.dirtylog import DirtyLayer, LayerState, new_cache_key
from cosencfs.cache.layout import new_vid


class Copies(Protocol):
    """What a layer's upload and direct copies are handed back to (CacheManager)."""

    def discard(self, v: ObjectContent) -> None: ...

    def close_copy(self, v: ObjectContent) -> None: ...


class Layers:
    def __init__(self, data_dir: Path, copies: Copies) -> None:
        self.data_dir = data_dir
        self._copies = copies
        self._by_vid: dict[str, DirtyLayer] = {}

    def __len__(self) -> int:
        return len(self._by_vid)

    def __contains__(self, vid: str) -> bool:
        return vid in self._by_vid

    def __iter__(self) -> Iterator[DirtyLayer]:
        return iter(list(self._by_vid.values()))

    def sources(self) -> Iterator[Source]:
        """The objects live dirty layers read through to."""
        return (layer.source for layer in self._by_vid.values() if layer.source is not None)

    def log_bytes(self) -> int:
        return sum(layer.log_size for layer in self._by_vid.values())

    def path(self, vid: str) -> str:
        return str(self.data_dir / f"{vid}.log")

    def new(
        self,
        *,
        size: int,
        limit: int,
        below: DirtyLayer | None = None,
        source: Source | None = None,
    ) -> DirtyLayer:
        vid = new_vid()
        layer = DirtyLayer(
            vid,
            self.path(vid),
            new_cache_key(),
            size=size,
            limit=limit,
            below=below,
            source=source,
        )
        self._by_vid[vid] = layer
        return layer

    def reopen(
        self,
        vid: str,
        cache_key: bytes,
        *,
        size: int,
        limit: int,
        log_end: int,
        below: DirtyLayer | None,
        source: Source | None,
    ) -> DirtyLayer:
        """A layer left by an earlier run (from the journal): its log replayed."""
        path = self.path(vid)
        layer = DirtyLayer(
            vid,
            path,
            cache_key,
            size=size,
            limit=limit,
            below=below,
            source=source,
            # A layer that never had a record never had a log file.
            create=log_end == 0 and not os.path.exists(path),
        )
        self._by_vid[vid] = layer
        try:
            layer.replay(log_end)
        except BaseException:
            self._by_vid.pop(vid, None)
            layer.close()
            raise
        layer.size, layer.limit = size, limit
        return layer

    def retire(self, layer: DirtyLayer) -> None:
        """Nobody needs this layer: delete its log (now, or when the last pin goes)."""
        layer.state = LayerState.RETIRED
        if layer.stream is not None:
            layer.stream.abandon()
            layer.stream = None
        if layer.pins == 0:
            self._drop(layer)

    def retire_chain(self, layer: DirtyLayer | None) -> None:
        """Retire ``layer`` and everything below it (nobody reads them any more).

        Their log files go: call this only once the journal no longer names
        them (docs/concurrency.md, "files and the journal").
        """
        while layer is not None:
            below = layer.below
            self._drop_copies(layer)
            self.retire(layer)
            layer = below

    def _drop_copies(self, layer: DirtyLayer) -> None:
        """The layer's upload and direct copies (not one already adopted as clean)."""
        for copy in {id(c): c for c in (layer.staged, layer.direct) if c is not None}.values():
            self._copies.discard(copy)
        layer.staged = layer.direct = None

    def release_chain(self, layer: DirtyLayer | None) -> None:
        """Close ``layer`` and those below it but keep their files: the journal
        still names them (an upload that failed, a recovery that must wait)."""
        while layer is not None:
            below = layer.below
            for copy in (layer.staged, layer.direct):
                if copy is not None and not copy.discarded:
                    self._copies.close_copy(copy)
            layer.staged = layer.direct = None
            self._by_vid.pop(layer.vid, None)
            layer.close()
            layer = below

    def unpin(self, layer: DirtyLayer) -> None:
        layer.pins -= 1
        if layer.pins == 0 and layer.state is LayerState.RETIRED:
            self._drop(layer)

    def _drop(self, layer: DirtyLayer) -> None:
        if self._by_vid.pop(layer.vid, None) is None:
            return
        # -1: the log was never made (a file written front to back has only
        # its direct copy): no unlink of a missing name on the loop per file.
        made = layer.fd != -1
        layer.close()
        layer.below = None
        if not made:
            return
        try:
            os.unlink(layer.path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """Close every layer, keeping its file (the daemon stops)."""
        for layer in self._by_vid.values():
            layer.close()
        self._by_vid.clear()
