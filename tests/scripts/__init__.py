"""Tests: the project's own scripts."""
