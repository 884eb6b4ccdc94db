"""The hyperctl commands, one module each (add_parser + run)."""

from __future__ import annotations

import logging
import sys


def show_repository_warnings() -> None:
    """Print the repository's warnings (e.g. a skipped damaged manifest) on stderr, one
    line each, so that a command that goes on past a bad record still says so."""
    logger = logging.getLogger("hypersdk.repository")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("hyperctl: warning: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
