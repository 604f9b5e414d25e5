"""Tests: the docs say what the code does."""
