"""Tests: tests/commands."""
