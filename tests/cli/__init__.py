"""Tests: tests/cli."""
