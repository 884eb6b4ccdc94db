"""Restore to qcow2 or vmdk without a raw intermediate.

The generation is served over NBD on a unix socket in a private temp folder and
``qemu-img convert`` reads it from there straight into the new image. Zero blocks are
reported as holes (``base:allocation``), so qemu-img skips them and the image stays
sparse; nothing of the disk's size is ever written twice. The publishing rules (private
work folder beside the target, one rename, ``force``) are those of
:func:`hypersdk.repository.restore.restore_disk`, which this calls with the converter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from hypersdk.access.export import RepositoryExport
from hypersdk.access.serving import BackgroundServer, Listen
from hypersdk.errors import ExportCancelled, RepositoryError, UsageError
from hypersdk.processes import stop_process
from hypersdk.repository.manifest import Manifest
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import RestoreResult, restore_disk

_POLL = 0.1
_COROUTINES = 8  # qemu-img convert -m: parallel requests in flight


def qemu_img() -> str:
    path = shutil.which("qemu-img")
    if path is None:
        raise UsageError("--format qcow2/vmdk needs qemu-img (Debian package qemu-utils)")
    return path


class NbdConverter:
    """An :class:`hypersdk.repository.restore.ImageConverter` reading over NBD."""

    def __init__(
        self,
        repo: Repository,
        manifest: Manifest,
        disk_key: str,
        *,
        parallel: int = 4,
        progress: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.repo = repo
        self.manifest = manifest
        self.disk_key = disk_key
        self.parallel = parallel
        self.progress = progress
        self.cancel = cancel

    def __call__(self, out: Path, fmt: str) -> int:
        tool = qemu_img()
        with (
            tempfile.TemporaryDirectory(prefix="hypersdk-restore-") as tmp,
            RepositoryExport(
                self.repo, self.manifest, self.disk_key, on_read=self.progress
            ) as export,
            BackgroundServer(
                export, Listen(socket=os.path.join(tmp, "nbd.sock")), workers=2 * self.parallel
            ) as server,
        ):
            cmd = [tool, "convert", "-q", "-W", "-m", str(_COROUTINES)]
            cmd += ["-f", "raw", "-O", fmt, server.uri, str(out)]
            self._run(cmd, fmt)
            if self.progress is not None:  # the holes qemu-img skipped
                self.progress(max(0, export.size - export.bytes_read))
            return export.bytes_read

    def _run(self, cmd: list[str], fmt: str) -> None:
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
            try:
                while True:
                    # checked after qemu-img ends too: a cancel is never published
                    if self.cancel is not None and self.cancel.is_set():
                        raise ExportCancelled("restore cancelled; the partial output was removed")
                    try:
                        code = proc.wait(_POLL)
                    except subprocess.TimeoutExpired:
                        continue
                    if self.cancel is None or not self.cancel.is_set():
                        break
            finally:
                stop_process(proc)  # by its pid; a no-op once it has exited
            if code != 0:
                err.seek(0)
                lines = err.read().decode("utf-8", "replace").strip().splitlines()
                raise RepositoryError(
                    f"qemu-img convert to {fmt}: {lines[-1] if lines else 'failed'}"
                )


def restore_image(
    repo: Repository,
    manifest: Manifest,
    disk_key: str,
    target: str | os.PathLike[str],
    *,
    fmt: str = "raw",
    force: bool = False,
    parallel: int = 4,
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> RestoreResult:
    """:func:`restore_disk` for every format: raw is written directly, qcow2 and vmdk
    through :class:`NbdConverter`."""
    convert = None
    if fmt != "raw":
        convert = NbdConverter(
            repo, manifest, disk_key, parallel=parallel, progress=progress, cancel=cancel
        )
    return restore_disk(
        repo,
        manifest,
        disk_key,
        target,
        fmt=fmt,
        force=force,
        parallel=parallel,
        progress=progress,
        cancel=cancel,
        convert=convert,
    )
