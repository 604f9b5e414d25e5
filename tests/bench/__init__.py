"""Tests: tests/bench."""
