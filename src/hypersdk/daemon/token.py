"""The daemon's API token file.

Without a configured token (``HYPERSDK_API_TOKEN`` or ``api_token``) the daemon makes a
random one at first start in ``<state dir>/api-token`` and reuses it later, so that an
SDK on the same host (which reads that file) works without configuration.

- The state folder is private (``hypersdk.state.folder.prepare_state_dir``).
- The token file is created exclusively (O_EXCL, never through a symlink), written,
  fsynced and read back, so two daemons starting at once agree on one token.
- A token file that is not ours, not a regular file, or readable by group or others is
  refused (not repaired): a token others could read may have leaked already; the
  operator deletes the file (a new token is made) or fixes its mode.
"""

from __future__ import annotations

import os
import secrets
import stat
import time
from pathlib import Path

from hypersdk.errors import UsageError
from hypersdk.state.folder import prepare_state_dir

TOKEN_FILE = "api-token"
MIN_TOKEN_LENGTH = 16
_READ_RETRIES = 50  # another daemon may have created the file but not written it yet


def check_token(token: str, source: str) -> str:
    if len(token) < MIN_TOKEN_LENGTH:
        raise UsageError(
            f"the API token from {source} is shorter than {MIN_TOKEN_LENGTH} characters"
        )
    if any(c.isspace() or not c.isprintable() for c in token):
        raise UsageError(f"the API token from {source} contains spaces or control characters")
    return token


def load_or_create_token(state_dir: Path) -> str:
    """The token of ``<state_dir>/api-token``, made first if the file does not exist."""
    prepare_state_dir(state_dir)
    path = state_dir / TOKEN_FILE
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return read_token_file(path)
    except OSError as exc:
        raise UsageError(f"cannot create the token file {path}: {exc.strerror}") from exc
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return read_token_file(path)


def read_token_file(path: Path) -> str:
    """Read a token file, refusing a symlink, another owner, or group/other access."""
    for _ in range(_READ_RETRIES):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            if os.path.islink(path):
                raise UsageError(f"token file {path} is a symbolic link; refusing it") from exc
            raise UsageError(f"cannot read the token file {path}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UsageError(f"token file {path} is not a regular file")
            if st.st_uid != os.getuid():
                raise UsageError(f"token file {path} belongs to another user")
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                raise UsageError(
                    f"token file {path} is accessible by group or others (mode {mode:04o}); "
                    "the token may have leaked: delete the file (a new token is made) "
                    "or chmod 600 it"
                )
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        token = data.decode("utf-8", errors="replace").strip()
        if token:
            return check_token(token, str(path))
        time.sleep(0.02)  # being written by another daemon starting at the same moment
    raise UsageError(f"token file {path} is empty: delete it and start again")
