"""Tests: tests/mount."""
