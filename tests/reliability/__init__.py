"""Tests: tests/reliability."""
