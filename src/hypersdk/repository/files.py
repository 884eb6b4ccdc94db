"""Small file-system helpers shared by the repository modules.

Atomic writes, syncs, private folders and files, and a rename that never replaces.
Everything the repository creates is owner-only (folders 0700, files 0600), set
explicitly so that the umask cannot widen or narrow it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

DIR_MODE = 0o700
FILE_MODE = 0o600
_AT_FDCWD = -100
_NOREPLACE = 1  # RENAME_NOREPLACE


def fsync_dir(path: Path) -> None:
    fsync_path(path, os.O_DIRECTORY)


def fsync_path(path: Path, flags: int = 0) -> None:
    """fsync a file (or, with ``os.O_DIRECTORY``, a folder) by its path."""
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and any missing parents with mode 0700 (existing ones are kept)."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:
            continue  # another writer made it first; its mode is ours too
        os.chmod(folder, DIR_MODE)  # mkdir's mode is filtered by the umask


def write_file(
    path: Path,
    data: bytes | memoryview | Sequence[bytes],
    *,
    durable: bool,
    writeback: bool = False,
) -> None:
    """Create ``path`` (which must not exist) with ``data`` (or the pieces of it, in one
    writev), mode 0600. ``writeback`` starts writing it out at once (``start_writeback``)
    for a caller that makes it durable later with one sync of many files."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # whatever the umask
        parts = [data] if isinstance(data, bytes | memoryview) else data
        views = [memoryview(p) for p in parts if len(p)]
        while views:
            written = os.writev(fd, views)
            while views and written >= len(views[0]):  # drop what was written whole
                written -= len(views.pop(0))
            if views:
                views[0] = views[0][written:]
        if writeback:
            start_writeback(fd, 0, 0)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def temp_name(path: Path, tmp_dir: Path) -> Path:
    return tmp_dir / f"{path.name}.{uuid.uuid4().hex[:12]}.tmp"


def write_atomic(path: Path, data: bytes, tmp_dir: Path, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    With ``durable`` the data is fsynced before the rename and the folder after it, so
    the name is durable only after the bytes. Without it the caller must make the bytes
    durable (syncfs) before anything names the file. The file is created 0600.
    """
    tmp = temp_name(path, tmp_dir)
    write_file(tmp, data, durable=durable)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def create_exclusive(path: Path, data: bytes, tmp_dir: Path) -> bool:
    """Create ``path`` with ``data`` durably unless it exists; True if this call made it.

    The whole file is written and fsynced under a temp name, then hard-linked to its
    final name: two racing creators cannot both win, and the loser never sees a
    partial file.
    """
    tmp = temp_name(path, tmp_dir)
    write_file(tmp, data, durable=True)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def rename_no_replace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` atomically; FileExistsError if ``dst`` exists.

    renameat2(RENAME_NOREPLACE) where the file system supports it, else link + unlink
    (also atomic in what it refuses: link(2) never replaces).
    """
    renameat2 = getattr(_libc, "renameat2", None)  # glibc 2.28 and later
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), str(dst))
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(dst))
    os.link(src, dst)
    os.unlink(src)


_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a range of a file out now, without waiting (Linux
    sync_file_range(2); length 0: to the end). The disk then writes while the work goes
    on, and the closing fsync or syncfs finds little left to wait for (an export's last
    syncfs otherwise waits for every chunk written since the batch before). Only a hint:
    the sync is what makes data durable."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def sync_filesystem(path: Path) -> None:
    """Flush every dirty page of the file system holding ``path`` (Linux syncfs(2))."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)
