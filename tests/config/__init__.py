"""Tests: cosencfs/config (the settings schema and loading)."""
