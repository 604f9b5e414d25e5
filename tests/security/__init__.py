"""Tests: tests/security."""
