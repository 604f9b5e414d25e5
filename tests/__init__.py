"""The cosencfs test suite (a package, so shared helpers import by path)."""
