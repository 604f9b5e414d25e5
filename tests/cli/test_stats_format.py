"""``cosencfs stats`` in text: the store's connections line (made, TLS full and resumed)."""

from __future__ import annotations

from typing import Any

from cosencfs.cli.stats import format_stats


def _stats(connections: dict[str, int] | None) -> dict[str, Any]:
    store: dict[str, Any] = {
        "requests": {"HeadObject": 3},
        "total_requests": 3,
        "failures": {},
        "retries": 0,
        "bytes_up": 0,
        "bytes_down": 0,
    }
    if connections is not None:
        store["connections"] = connections
    return {
        "store": store,
        "cache": {"bytes": 0, "limit": 1, "hit_ratio": 0.0, "hits": 0, "misses": 0},
        "dirty": {"files": 0, "bytes": 0},
        "uploads": {"queued": 0, "done": 0, "failed": 0, "failing_now": 0, "last_error": ""},
    }


def test_connections_line_says_how_tls_connections_were_made() -> None:
    text = format_stats(_stats({"opened": 4, "tls_full": 1, "tls_resumed": 3}))
    assert "connections  4 opened (TLS: 1 full, 3 resumed)" in text.splitlines()
    plain = format_stats(_stats({"opened": 2}))
    assert "connections  2 opened" in plain.splitlines()


def test_a_daemon_without_connection_counts_shows_none() -> None:
    assert "connections  0 opened" in format_stats(_stats(None)).splitlines()
