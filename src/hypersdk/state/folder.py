"""The state folder (``~/.hypersdk``, or ``HYPERSDK_STATE_DIR``): the export history, the
daemon's token and job database. It is private: created 0700, or made 0700 when it is
ours. A shared folder (world-writable or sticky, like /tmp) is refused rather than
changed: forcing /tmp to 0700 would break every other user of the machine.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hypersdk.errors import UsageError

PRIVATE_DIR = 0o700


def state_dir() -> Path:
    return Path(os.environ.get("HYPERSDK_STATE_DIR") or Path.home() / ".hypersdk")


def prepare_state_dir(folder: Path) -> None:
    """Create ``folder`` 0700 (parents as needed) or make an existing one of ours 0700."""
    try:
        folder.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        st = os.stat(folder)
    except OSError as exc:
        raise UsageError(f"cannot create the state folder {folder}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"state folder {folder} is not a folder")
    if st.st_uid != os.getuid():
        raise UsageError(f"state folder {folder} belongs to another user")
    if st.st_mode & (stat.S_ISVTX | stat.S_IWOTH):
        raise UsageError(
            f"state folder {folder} is shared (world-writable or sticky): choose a private "
            "folder with HYPERSDK_STATE_DIR"
        )
    if stat.S_IMODE(st.st_mode) != PRIVATE_DIR:
        try:
            os.chmod(folder, PRIVATE_DIR)
        except OSError as exc:
            raise UsageError(f"cannot make {folder} private: {exc.strerror}") from exc


def private_subfolder(parent: Path, *names: str) -> Path:
    """``parent/names...``, each level created or made 0700 (they are ours: the parent is
    the private state folder)."""
    path = parent
    for name in names:
        path = path / name
        path.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        if stat.S_IMODE(path.lstat().st_mode) != PRIVATE_DIR:
            os.chmod(path, PRIVATE_DIR)
    return path
