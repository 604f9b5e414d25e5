"""Tests: tests/keystream."""
