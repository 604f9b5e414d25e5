"""`python -m cosencfs`: the same command line as the `cosencfs` entry point."""

from __future__ import annotations

import sys

from cosencfs.cli import main

sys.exit(main())
