"""Benchmarks of cosencfs; run each module with ``python -m benchmarks.<name>``."""
