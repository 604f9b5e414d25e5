"""Sizes and settings of one benchmark run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.server import Network

MIB = 1024 * 1024

#: Workload names in run order, with the letter of the issue that defined them.
WORKLOADS: dict[str, str] = {
    "seq_write": "a",
    "seq_read": "b",
    "small_create": "c",
    "ls": "d",
    "rand_read": "e",
    "rm_r": "f",
    "rsync": "g",
    "big_write_rss": "h",
    "rand_write": "i",
    "rand_read_big": "j",
    "cache_bound": "k",
}

#: What a workload needs on the mount before it can run; a prerequisite that
#: was not selected with ``--only`` runs untimed, as set-up.
REQUIRES: dict[str, tuple[str, ...]] = {
    "seq_read": ("seq_write",),
    "rand_read": ("seq_write",),
    "ls": ("small_create",),
    "rm_r": ("small_create",),
    "rand_read_big": ("seq_write",),
    "cache_bound": ("seq_write",),
}

ALL_PEERS = ("cosencfs", "cosencfs-base", "passthrough", "rclone", "s3fs")


@dataclass(frozen=True, slots=True)
class Sizes:
    big_file: int  # (a), (b), (e)
    small_files: int  # (c), (d), (f)
    small_size: int
    random_reads: int  # (e)
    tree_files: int  # (g)
    tree_dirs: int
    huge_file: int  # (h)
    rand_write_file: int  # (i)
    random_writes: int
    #: Upper bound of each wait; scaled with the sizes.
    timeout: float
    huge_timeout: float

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            big_file=256 * MIB,
            small_files=1000,
            small_size=4096,
            random_reads=1000,
            tree_files=1000,
            tree_dirs=8,
            huge_file=2048 * MIB,
            rand_write_file=64 * MIB,
            random_writes=2000,
            timeout=600.0,
            huge_timeout=1800.0,
        )

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            big_file=8 * MIB,
            small_files=50,
            small_size=4096,
            random_reads=100,
            tree_files=50,
            tree_dirs=4,
            huge_file=16 * MIB,
            rand_write_file=8 * MIB,
            random_writes=200,
            timeout=60.0,
            huge_timeout=60.0,
        )


@dataclass(slots=True)
class BenchConfig:
    sizes: Sizes
    quick: bool
    workloads: list[str]
    peers: list[str]
    out: Path
    workdir: Path
    results_dir: Path
    profile: bool = False
    profile_workloads: list[str] = field(default_factory=list)
    keep: bool = False
    #: Before each measurement, wait up to this long for the CPUs to be idle
    #: (the machine may be shared); 0 = do not wait.
    quiet_wait: float = 0.0
    seed: int = 42
    notes: list[str] = field(default_factory=list)
    #: Every peer runs this many times, interleaved; each row is the median.
    repeat: int = 1
    #: A git revision of cosencfs to run beside the working tree (peer
    #: "cosencfs-base"), to compare before and after a change in one run.
    baseline: str | None = None
    #: The networks every peer runs over (RTT, http or https), in this order.
    networks: list[Network] = field(default_factory=lambda: [Network()])
    #: --scale: directory sizes of the scale workload (empty: not run).
    scale: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sizes": asdict(self.sizes),
            "quick": self.quick,
            "workloads": self.workloads,
            "peers": self.peers,
            "out": str(self.out),
            "workdir": str(self.workdir),
            "profile": self.profile,
            "seed": self.seed,
            "quiet_wait": self.quiet_wait,
            "repeat": self.repeat,
            "baseline": self.baseline,
            "networks": [asdict(n) | {"label": n.label} for n in self.networks],
            "scale": self.scale,
        }
