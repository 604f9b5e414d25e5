"""Tests: tests/interop."""
