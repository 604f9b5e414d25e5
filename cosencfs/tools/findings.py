"""What fsck reports: finding categories, one finding, and the run's counters.

Shared by the fsck engine (``fsck.py``) and its tag checks (``verify.py``);
the command line prints them (``cosencfs/cli/fsck.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from cosencfs.errors import NotFoundError, StoreError
from cosencfs.store.base import ObjectInfo, ObjectStore

__all__ = ["Category", "Finding", "FsckStats", "TagCounts"]


class Category(Enum):
    PLAIN = "plain"
    FOREIGN = "foreign"
    DAMAGED = "damaged"
    WRONG_KEY = "wrong-key"
    UNREACHABLE_NAME = "unreachable-name"
    NAME_CLASH = "name-clash"
    SIZE = "size"
    MODE = "mode"
    ORPHAN_UPLOAD = "orphan-upload"
    UNTAGGED = "untagged"
    INTEGRITY = "integrity"
    ATTRIBUTES = "attributes"
    ORPHAN_COMPANION = "orphan-companion"
    ERROR = "error"


@dataclass(slots=True, frozen=True)
class Finding:
    category: Category
    key: str
    detail: str
    upload_id: str = ""
    #: What fsck did about it ("aborted", "abort failed: ..."), or "".
    action: str = ""
    #: The 64 KiB chunk an ``integrity`` finding is about (the first that failed).
    chunk: int | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "category": self.category.value,
            "key": self.key,
            "detail": self.detail,
        }
        if self.upload_id:
            out["upload_id"] = self.upload_id
        if self.action:
            out["action"] = self.action
        if self.chunk is not None:
            out["chunk"] = self.chunk
        return out


@dataclass(slots=True)
class TagCounts:
    """Integrity tags seen (docs/format.md, section 12)."""

    #: Objects whose object tag, every chunk and attribute tag verified (``--verify``).
    verified: int = 0
    #: Body bytes of the objects that verified, chunk by chunk (``--verify``).
    bytes_verified: int = 0
    #: Objects whose object tag (and attribute tag) verified from metadata alone
    #: (without ``--verify``: no body or companion read).
    metadata_checked: int = 0
    #: Objects (and directory markers with attributes) the mount serves unauthenticated.
    untagged: int = 0
    #: Objects with an ``integrity`` finding.
    failed: int = 0
    #: Companion objects listed (``<prefix>.cosencfs-tags/...``).
    companions: int = 0
    #: Orphaned companions deleted (``--delete-orphans``).
    companions_deleted: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "verified": self.verified,
            "bytes_verified": self.bytes_verified,
            "metadata_checked": self.metadata_checked,
            "untagged": self.untagged,
            "failed": self.failed,
            "companions": self.companions,
            "companions_deleted": self.companions_deleted,
        }


@dataclass(slots=True)
class FsckStats:
    objects: int = 0
    markers: int = 0
    #: Fifos, sockets and device nodes (empty objects whose mode says so).
    special: int = 0
    bytes: int = 0
    #: Objects whose envelope opened with the key, by format (cosencfs / sdk).
    ok: Counter[str] = field(default_factory=Counter)
    #: SDK ``aes-ctr`` envelopes: opened, but no key check exists for them.
    unverified: int = 0
    #: Objects deleted (or, with ``--verify``, replaced) while they were checked.
    vanished: int = 0
    uploads: int = 0
    orphans_aborted: int = 0
    tags: TagCounts = field(default_factory=TagCounts)
    findings: Counter[Category] = field(default_factory=Counter)

    @property
    def clean(self) -> bool:
        return not any(self.findings.values())

    def status(self) -> dict[str, int]:
        out = {"ok": sum(self.ok.values()), "problems": sum(self.findings.values())}
        if self.tags.verified:
            out["verified"] = self.tags.verified
            out["MiB"] = self.tags.bytes_verified >> 20
        return out

    def as_dict(self) -> dict[str, object]:
        return {
            "objects": self.objects,
            "directory_markers": self.markers,
            "special_files": self.special,
            "bytes": self.bytes,
            "ok": dict(sorted(self.ok.items())),
            "unverified": self.unverified,
            "vanished": self.vanished,
            "multipart_uploads": self.uploads,
            "orphans_aborted": self.orphans_aborted,
            "tags": self.tags.as_dict(),
            "findings": {c.value: self.findings[c] for c in Category},
            "clean": self.clean,
        }


async def head_or_report(
    store: ObjectStore, key: str, stats: FsckStats, add: Callable[[Finding], None]
) -> ObjectInfo | None:
    """HEAD ``key``; None when it vanished (counted) or failed (a finding)."""
    try:
        return await store.head(key)
    except NotFoundError:
        stats.vanished += 1
    except StoreError as exc:
        add(Finding(Category.ERROR, key, f"HEAD failed: {exc}"))
    return None
