"""The targets of the issue, evaluated on one run's rows (ratios from that run)."""

from __future__ import annotations

from benchmarks.config import MIB
from benchmarks.results import PUT_OPS, Row, TargetResult


class _Rows:
    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def get(self, peer: str, key: str) -> Row | None:
        for r in self.rows:
            if r.peer == peer and r.key == key and r.error is None and r.seconds is not None:
                return r
        return None


def _f(row: Row | None, attr: str) -> float | None:
    if row is None:
        return None
    value = getattr(row, attr)
    return None if value is None else float(value)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _fmt(x: float | None, suffix: str = "x") -> str:
    return "n/a" if x is None else f"{x:.2f}{suffix}"


def _all(*checks: bool | None) -> bool | None:
    if any(c is False for c in checks):
        return False
    if any(c is None for c in checks):
        return None
    return True


def _le(x: float | None, bound: float, *, strict: bool = False) -> bool | None:
    if x is None:
        return None
    return x < bound if strict else x <= bound


def _ge(x: float | None, bound: float) -> bool | None:
    return None if x is None else x >= bound


def evaluate(rows: list[Row], *, small_files: int) -> list[TargetResult]:
    t = _Rows(rows)
    out: list[TargetResult] = []
    cos = "cosencfs"

    # 1. sequential write until committed >= 3x rclone crypt
    c, r = t.get(cos, "seq_write"), t.get("rclone", "seq_write")
    x = _ratio(_f(c, "rate"), _f(r, "rate"))
    out.append(TargetResult("1", "sequential write until committed >= 3x rclone crypt",
                            _ge(x, 3.0), f"{_fmt(x)} rclone"))  # fmt: skip

    # 2. cold sequential read >= 1.5x rclone and >= 60% of the passthrough
    c, r, p = t.get(cos, "seq_read"), t.get("rclone", "seq_read"), t.get("passthrough", "seq_read")
    xr = _ratio(_f(c, "rate"), _f(r, "rate"))
    xp = _ratio(_f(c, "rate"), _f(p, "rate"))
    out.append(TargetResult(
        "2", "cold sequential read >= 1.5x rclone crypt and >= 60% of the passthrough",
        _all(_ge(xr, 1.5), _ge(xp, 0.6)),
        f"{_fmt(xr)} rclone, {_fmt(None if xp is None else 100 * xp, '%')} of passthrough",
    ))  # fmt: skip

    # 3. small files created and committed >= 2x faster, <= 1 request per file
    c, r = t.get(cos, "small_create"), t.get("rclone", "small_create")
    x = _ratio(_f(r, "seconds"), _f(c, "seconds"))
    per_file = None if c is None or c.total_requests is None else c.total_requests / small_files
    out.append(TargetResult(
        "3", f"{small_files} small files created and committed >= 2x faster than rclone crypt,"
        " <= 1 request per file",
        _all(_ge(x, 2.0), None if per_file is None else per_file <= 1.0),
        f"{_fmt(x)} faster, {_fmt(per_file, '')} requests/file",
    ))  # fmt: skip

    # 4. cold ls -l <= half rclone's time; warm ls -l zero requests
    r = t.get("rclone", "ls_cold:empty cache")
    warm = [w for w in rows if w.peer == cos and w.workload == "ls_warm" and w.error is None]
    warm_zero = None if not warm else all(w.total_requests == 0 for w in warm)
    for num, variant in (("4a", "same cache"), ("4b", "empty cache")):
        c = t.get(cos, f"ls_cold:{variant}")
        x = _ratio(_f(c, "seconds"), _f(r, "seconds"))
        reqs = "n/a" if c is None else _ops(c)
        out.append(TargetResult(
            num, f"cold ls -l ({variant} dir) <= 1/2 of rclone crypt's time;"
            " warm ls -l zero requests",
            _all(None if x is None else x <= 0.5, warm_zero),
            f"{_fmt(x)} of rclone's time; warm requests "
            f"{'n/a' if not warm else [w.total_requests for w in warm]}",
            detail=f"cold requests: {reqs}",
        ))  # fmt: skip

    # 5. random 4 KiB reads cold >= 2x ops/s, <= 1/10 of the bytes downloaded
    c, r = t.get(cos, "rand_read"), t.get("rclone", "rand_read")
    x = _ratio(_f(c, "rate"), _f(r, "rate"))
    xb = _ratio(_f(c, "bytes_down"), _f(r, "bytes_down"))
    out.append(TargetResult(
        "5", "random 4 KiB reads cold >= 2x rclone crypt's ops/s, <= 1/10 of its bytes down",
        _all(_ge(x, 2.0), None if xb is None else xb <= 0.1),
        f"{_fmt(x)} ops/s, {'n/a' if xb is None else f'{xb:.3f}x'} bytes down",
        detail=f"cosencfs {_mib(_f(c, 'bytes_down'))} down, rclone {_mib(_f(r, 'bytes_down'))}",
    ))  # fmt: skip

    # 6. rm -r no slower than rclone crypt
    c, r = t.get(cos, "rm_r"), t.get("rclone", "rm_r")
    x = _ratio(_f(c, "seconds"), _f(r, "seconds"))
    out.append(TargetResult(
        "6", "rm -r of the small files no slower than rclone crypt",
        None if x is None else x <= 1.0, f"{_fmt(x)} of rclone's time",
    ))  # fmt: skip

    # 7. second identical rsync: zero PUT requests, < 2 s
    c = t.get(cos, "rsync:second")
    puts = None if c is None else c.count(PUT_OPS)
    out.append(TargetResult(
        "7", "second identical rsync -a: zero PUT requests and < 2 s",
        _all(None if puts is None else puts == 0, _le(_f(c, "seconds"), 2.0, strict=True)),
        "n/a" if c is None else f"{c.seconds:.2f} s, {puts} PUT, {c.total_requests} requests",
    ))  # fmt: skip

    # 8. peak daemon RSS writing the big file < 200 MiB
    c = t.get(cos, "big_write_rss")
    peak = None if c is None else c.extra.get("peak_rss")
    out.append(TargetResult(
        "8", "peak daemon RSS writing the big file < 200 MiB",
        None if peak is None else peak < 200 * MIB,
        "n/a" if peak is None else f"{peak / MIB:.0f} MiB",
    ))  # fmt: skip

    # 9. random reads in a file 4x the cache limit: bytes down <= 4x bytes read (issue 15)
    c = t.get(cos, "rand_read_big")
    per = None if c is None else c.extra.get("down_per_read")
    out.append(TargetResult(
        "9", "random 4 KiB reads in a file 4x the cache limit: bytes down <= 4x bytes read",
        None if per is None else per <= 4.0,
        "n/a" if per is None else f"{per:.2f}x the bytes read",
    ))  # fmt: skip

    # 10. the cache directory stays within its limit reading a file 4x the limit (issue 15)
    c = t.get(cos, "cache_bound")
    limit = None if c is None else c.extra.get("cache_limit")
    peak = None if c is None else c.extra.get("cache_peak")
    x = None if peak is None or not limit else peak / limit
    out.append(TargetResult(
        "10", "reading a file 4x the cache limit: cache directory <= the limit",
        None if x is None else x <= 1.0,
        "n/a" if x is None else f"peak {x:.2f}x the limit",
        detail="" if c is None else f"after close {c.extra.get('cache_after', 0) / MIB:.0f} MiB",
    ))  # fmt: skip
    return out


def _mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / MIB:.2f} MiB"


def _ops(row: Row) -> str:
    if row.requests is None:
        return "n/a"
    return ", ".join(f"{op} {n}" for op, n in sorted(row.requests.items())) or "none"
