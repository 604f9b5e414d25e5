"""``python -m cosencfs.cli``: the ``cosencfs`` program."""

from __future__ import annotations

import sys

from cosencfs.cli import main

sys.exit(main())
