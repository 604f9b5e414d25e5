"""Tests: tests/server."""
