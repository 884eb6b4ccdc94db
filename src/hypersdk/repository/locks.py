"""Repository locks, built on flock(2) so that a lock dies with its process.

A writer holds the VM's lock exclusively and the repository lock shared; ``gc`` holds the
repository lock exclusively. Both are taken without waiting: a second writer fails at once
with a message naming the holder. A lock file whose holder died is simply taken over
(the kernel released it); its stale holder record is reported.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypersdk.errors import LockedError
from hypersdk.repository.files import FILE_MODE, make_private_dirs
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


def _open(path: Path, shared: bool) -> int | None:
    """The lock file's descriptor; None for a reader on a read-only file system where it
    was never made (nobody can run gc there, so there is nothing to lock against)."""
    try:
        make_private_dirs(path.parent)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        if not shared or exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        denied = exc
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        if denied.errno != errno.EROFS:
            raise denied from None
        return None


@contextmanager
def hold(path: Path, *, shared: bool, what: str) -> Iterator[dict[str, object]]:
    """Hold the lock at ``path``; yields the record of a dead previous holder, if any.

    A shared holder that may not write the repository (a read-only mount or another
    user's repository) locks the file read-only (flock works on any descriptor).
    """
    fd = _open(path, shared)
    if fd is None:
        yield {}
        return
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
