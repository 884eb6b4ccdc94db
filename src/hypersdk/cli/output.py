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
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from hypersdk.errors import HyperSDKError


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    sys.stdout.flush()


def fail(prog: str, err: BaseException, *, as_json: bool) -> int:
    """Report an error in one line (or one JSON object) and return the exit code."""
    if isinstance(err, HyperSDKError):
        message, code, kind = str(err), err.exit_code, err.code
    elif isinstance(err, KeyboardInterrupt):
        message, code, kind = "interrupted; nothing was committed", 130, "cancelled"
    elif isinstance(err, OSError):
        where = f" ({err.filename})" if err.filename else ""
        message, code, kind = f"{err.strerror or err}{where}", 1, "os_error"
    else:
        raise err
    if as_json:
        print_json({"error": message, "code": kind})
    else:
        sys.stderr.write(f"{prog}: error: {message}\n")
    return code


@contextmanager
def progress_bar(description: str, total: int, *, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A bytes progress bar with speed and ETA on a terminal; a no-op otherwise."""
    if not enabled or not sys.stderr.isatty() or total <= 0:
        yield lambda n: None
        return
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
