"""Tests: tests/fs."""
