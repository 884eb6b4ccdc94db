"""Repository locks, built on flock(2) so that a lock dies with its process.

A writer holds the VM's lock exclusively and the repository lock shared; ``gc`` holds the
repository lock exclusively. Both are taken without waiting: a second writer fails at once
with a message naming the holder. A lock file whose holder died is simply taken over
(the kernel released it); its stale holder record is reported.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypersdk.errors import LockedError
from hypersdk.repository.manifest import iso, utc_now


def _holder(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, object]) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"


@contextmanager
def hold(path: Path, *, shared: bool, what: str) -> Iterator[dict[str, object]]:
    """Hold the lock at ``path``; yields the record of a dead previous holder, if any."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"{what} is locked by {_describe(_holder(path))}") from None
        stale: dict[str, object] = {}
        if not shared:
            stale = _holder(path)
            record = {"pid": os.getpid(), "host": socket.gethostname(), "since": iso(utc_now())}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
        try:
            yield stale
        finally:
            if not shared:
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the flock
