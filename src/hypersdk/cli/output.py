"""What every command prints: one-line errors, JSON, sizes, progress bars."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from hypersdk.cmdline import OneLineParser
from hypersdk.errors import HyperSDKError

__all__ = [
    "ByteProgress",
    "OneLineParser",
    "byte_columns",
    "error_fields",
    "fail",
    "human_bytes",
    "print_json",
]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    sys.stdout.flush()


def error_fields(err: BaseException) -> tuple[str, int, str]:
    """(message, exit code, error code) for an error a user may meet; anything else is a
    bug and is raised again."""
    if isinstance(err, HyperSDKError):
        return str(err), err.exit_code, err.code
    if isinstance(err, KeyboardInterrupt):
        return "interrupted; nothing was committed", 130, "cancelled"
    if isinstance(err, OSError):
        where = f" ({err.filename})" if err.filename else ""
        return f"{err.strerror or err}{where}", 1, "os_error"
    raise err


def fail(prog: str, err: BaseException, *, as_json: bool) -> int:
    """Report an error in one line (or one JSON object) and return the exit code."""
    message, code, kind = error_fields(err)
    if as_json:
        print_json({"error": message, "code": kind})
    else:
        sys.stderr.write(f"{prog}: error: {message}\n")
    return code


class _MibPerSecond(ProgressColumn):
    """Speed in MiB/s, to match the binary sizes beside it (rich's column is MB/s)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(
            "?" if speed is None else f"{speed / 2**20:.0f} MiB/s", style="progress.data.speed"
        )


def byte_columns() -> tuple[ProgressColumn, ...]:
    """The columns of a bytes progress row: label, bar, done/total, speed, ETA."""
    return (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        _MibPerSecond(),
        TimeRemainingColumn(),
    )


class ByteProgress:
    """A bytes progress bar (speed, ETA) on stderr when it is a terminal; else silent.
    Started late, once the total is known (an export learns it from the session)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def start(self, description: str, total: int) -> None:
        if not self.enabled or total <= 0 or self._bar is not None:
            return
        self._bar = Progress(*byte_columns(), console=Console(stderr=True))
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, n: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


@contextmanager
def progress_bar(description: str, total: int, *, enabled: bool) -> Iterator[Callable[[int], None]]:
    bar = ByteProgress(enabled=enabled)
    bar.start(description, total)
    try:
        yield bar.advance
    finally:
        bar.close()


def print_table(table: Table) -> None:
    """A table on stdout: fitted to a terminal, never cut when piped (a pipe or a file
    has no width, and rich would squeeze ids such as generation names into "2026…")."""
    console = Console() if sys.stdout.isatty() else Console(width=_UNBOUNDED)
    console.print(table)


_UNBOUNDED = 10_000
