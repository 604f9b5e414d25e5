"""Tests: tests/cache."""
