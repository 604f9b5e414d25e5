"""The result records of a run (what the JSON file holds)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MIB = 1024 * 1024


#: Requests that upload data or create an object: "PUT requests" in the targets.
PUT_OPS = frozenset(
    {"PutObject", "CopyObject", "InitiateMultipartUpload", "UploadPart", "UploadPartCopy",
     "CompleteMultipartUpload"}
)  # fmt: skip


@dataclass(slots=True)
class Row:
    """One workload (one variant of it) on one filesystem."""

    peer: str
    workload: str
    variant: str = ""
    label: str = ""
    seconds: float | None = None
    rate: float | None = None
    unit: str = ""
    #: Server-side request counts by COS operation; None: the peer has no bucket.
    requests: dict[str, int] | None = None
    bytes_up: int | None = None
    bytes_down: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    error: str | None = None
    #: The network it ran over (``benchmarks.server.Network.label``: "10 ms https").
    network: str = ""

    @property
    def key(self) -> str:
        return f"{self.workload}:{self.variant}" if self.variant else self.workload

    @property
    def total_requests(self) -> int | None:
        return None if self.requests is None else sum(self.requests.values())

    def count(self, ops: frozenset[str]) -> int | None:
        if self.requests is None:
            return None
        return sum(n for op, n in self.requests.items() if op in ops)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["key"] = self.key
        d["total_requests"] = self.total_requests
        d["put_requests"] = self.count(PUT_OPS)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Row:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(slots=True)
class PeerStatus:
    name: str
    status: str  # "ok", "skipped", "failed"
    version: str = ""
    error: str | None = None
    exit_status: int | None = None
    #: The network of this run, and the server's connection counts over the whole run
    #: (plain, TLS, failed handshakes): proof of what the peer really used.
    network: str = ""
    connections: dict[str, int] = field(default_factory=dict)
    run: int = 0


@dataclass(slots=True)
class TargetResult:
    number: str
    text: str
    met: bool | None  # None: could not be evaluated (a peer or row missing)
    measured: str
    detail: str = ""
    network: str = ""

    @property
    def verdict(self) -> str:
        return {True: "met", False: "NOT met", None: "n/a"}[self.met]
