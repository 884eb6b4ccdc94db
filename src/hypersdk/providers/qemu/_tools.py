"""qemu-img and qemu-nbd: the only module of the provider that runs QEMU's tools.

Failures become ``hypersdk.errors`` types: a missing tool or a failed command is a
``ProviderError`` with the tool's last stderr line; an image locked by another process
(a running VM) is a ``ConflictError``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from typing import Any

from hypersdk.errors import ConflictError, NotFoundError, ProviderError
from hypersdk.processes import stop_process

TOOL_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0


def _run(argv: list[str], subject: str, *, timeout: float = TOOL_TIMEOUT) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as err:
        raise ProviderError(f"{argv[0]} is not installed (Debian package qemu-utils)") from err
    except subprocess.TimeoutExpired as err:
        raise ProviderError(f"{argv[0]} did not finish within {timeout:g} s") from err
    except OSError as err:
        raise ProviderError(f"cannot run {argv[0]}: {err}") from err
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        detail = " ".join(lines) if lines else f"exit status {proc.returncode}"
        if "Failed to get" in detail and "lock" in detail:
            raise ConflictError(
                f"{subject} is in use by another process; back up a running VM through "
                "its QMP socket (qemu:/path/to/qmp.sock)"
            )
        if "No such file" in detail:
            raise NotFoundError(f"{argv[0]}: {detail}")
        raise ProviderError(f"{argv[0]} failed: {detail}")
    return proc.stdout


def image_info(path: str, *, force_share: bool = False) -> dict[str, Any]:
    """``qemu-img info --output=json``. Without ``force_share`` the call takes the
    image's shared lock and fails with ``ConflictError`` if a writer holds it."""
    argv = ["qemu-img", "info", "--output=json"]
    if force_share:
        argv.append("-U")
    argv.append(path)
    out = _run(argv, path)
    try:
        info = json.loads(out)
    except ValueError as err:
        raise ProviderError(f"qemu-img info printed no JSON for {path}") from err
    if not isinstance(info, dict):
        raise ProviderError(f"qemu-img info printed unexpected JSON for {path}")
    return info


def create_qcow2(path: str, size: int) -> None:
    _run(["qemu-img", "create", "-q", "-f", "qcow2", path, str(size)], path)


def bitmap(path: str, name: str, *ops: str) -> None:
    """``qemu-img bitmap OPS -f qcow2 PATH NAME``; ``ops`` run in the given order, e.g.
    ``("--add",)``, ``("--remove",)``, ``("--add", "--disable", "--merge", "src")``."""
    _run(["qemu-img", "bitmap", *ops, "-f", "qcow2", path, name], path)


class QemuNbd:
    """A ``qemu-nbd`` server on a unix socket, stopped by its pid: read-only unless
    ``writable`` (a restore into the image)."""

    def __init__(
        self,
        image: str,
        socket_path: str,
        export_name: str,
        bitmap: str | None,
        *,
        writable: bool = False,
        fmt: str = "qcow2",
    ):
        self.image = image
        self.socket_path = socket_path
        self.export_name = export_name
        self.bitmap = bitmap
        self.writable = writable
        self.fmt = fmt
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"unix:{self.socket_path}"

    def start(self, timeout: float = 10.0) -> None:
        argv = [
            "qemu-nbd",
            "--discard=unmap" if self.writable else "--read-only",
            "--persistent",
            "--shared=16",
            f"--format={self.fmt}",
            f"--socket={self.socket_path}",
            f"--export-name={self.export_name}",
        ]
        if self.bitmap:
            argv.append(f"--bitmap={self.bitmap}")
        argv.append(self.image)
        if shutil.which("setpriv"):
            # qemu-nbd must not outlive us: a server left by a crashed run would keep the
            # image locked. util-linux's setpriv sets the parent-death signal before exec.
            argv = ["setpriv", "--pdeathsig", "TERM", "--", *argv]
        try:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        except OSError as err:
            raise ProviderError(f"cannot start qemu-nbd: {err}") from err
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                err_text = (
                    self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                )
                lines = [ln for ln in err_text.splitlines() if ln.strip()]
                self._proc = None
                raise ProviderError(f"qemu-nbd exited: {lines[-1] if lines else 'no message'}")
            if _socket_accepts(self.socket_path):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise ProviderError(f"qemu-nbd did not listen on {self.socket_path}")
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        stop_process(proc, grace=STOP_TIMEOUT)
        if proc.stderr:
            proc.stderr.close()


def _socket_accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True
