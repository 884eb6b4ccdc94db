"""What every command line (hyperexport, hyperctl, hypervisord) shares: argument parsing
that reports a usage mistake in one line with exit code 2, never the usage dump."""

from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line (exit 2), without the usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")
