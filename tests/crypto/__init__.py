"""Tests: tests/crypto."""
