"""Tests: tests/service."""
