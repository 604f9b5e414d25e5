"""Tests: tests/model."""
