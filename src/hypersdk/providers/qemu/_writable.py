"""A writable NBD export of a disk, for a restore into it.

Two kinds of disk:

* a qcow2 file no process has open: ``qemu-nbd`` (writable) serves it on a unix socket
  in a private temp folder; qemu-nbd takes the image's write lock, so an image that a
  VM uses is refused (ConflictError);
* a disk of a QEMU (``qemu:`` locator): the guest must not run (``query-status``; a
  qemu-storage-daemon has no guest and counts as stopped); the disk node is exported
  writable with ``block-export-add`` on the NBD server the locator names (``?nbd=``) or
  on one we start on a private socket.

Everything made here is undone on every exit, also on errors and Ctrl-C (CleanupStack):
the client is closed, the export removed, the NBD server we started stopped, the temp
folder deleted. Export ids are ``hypersdk-restore-<random>``: never the backup
sessions' names, so their sweeper leaves a running restore alone.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import time
from types import TracebackType

from hypersdk.errors import ConflictError, NotFoundError, ProviderError, UsageError
from hypersdk.nbd import NbdClient
from hypersdk.providers.cleanup import CleanupStack
from hypersdk.providers.qemu import _discovery, _tools
from hypersdk.providers.qemu._factory import check_exists
from hypersdk.providers.qemu._qmp import QmpCommandError, QmpConnection

WAIT_TIMEOUT = 30.0


class WritableDisk:
    """An open writable NBD client on one disk (``client``), and how to undo it all.
    ``name`` says which disk it is, for messages and reports."""

    def __init__(self) -> None:
        self.client: NbdClient | None = None
        self.name = ""
        self._cleanup = CleanupStack()
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        errors = self._cleanup.run()
        if errors:
            raise ProviderError("cleanup after the restore failed: " + "; ".join(errors))

    def __enter__(self) -> WritableDisk:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(ProviderError):  # the first error is the one to report
            self.close()

    def _folder(self) -> str:
        folder = tempfile.mkdtemp(prefix="hypersdk-restore-")
        os.chmod(folder, 0o700)
        self._cleanup.push("remove temp folder", lambda: shutil.rmtree(folder))
        return folder

    def _connect(self, uri: str, export: str) -> NbdClient:
        client = NbdClient.connect(uri, export_name=export)
        self._cleanup.push("close NBD client", client.close)
        if client.read_only:
            raise ProviderError(f"the NBD export of {self.name} is read-only")
        self.client = client
        return client


def open_image(path: str, fmt: str = "qcow2") -> WritableDisk:
    """Serve the image file ``path`` writable with qemu-nbd."""
    disk = WritableDisk()
    disk.name = path
    try:
        folder = disk._folder()
        server = _tools.QemuNbd(
            path, os.path.join(folder, "nbd.sock"), "disk", None, writable=True, fmt=fmt
        )
        try:
            server.start()
        except ProviderError as err:
            if "lock" in str(err) or "another process" in str(err):
                raise ConflictError(
                    f"{path} is in use by another process (a running VM?); stop it first"
                ) from err
            raise
        disk._cleanup.push("stop qemu-nbd", server.stop)
        disk._connect(server.uri, server.export_name)
    except BaseException:
        with contextlib.suppress(ProviderError):
            disk.close()
        raise
    return disk


def open_qemu_disk(locator: str, key: str) -> WritableDisk:
    """Export the disk ``key`` of the QEMU that ``locator`` names, writable (its only
    disk when none has that key)."""
    scheme, path, options = check_exists(locator)
    if scheme != "qemu":
        raise UsageError(f"{locator} is not a qemu: locator")
    disk = WritableDisk()
    try:
        qmp = QmpConnection.connect(path)
        disk._cleanup.push("close QMP connection", qmp.close)
        _refuse_running(qmp, locator)
        target = _pick(_discovery.discover(qmp), key, locator)
        disk.name = f"{locator} disk {target.key}"
        if target.read_only:
            raise UsageError(f"{disk.name} is read-only")
        uri = _nbd_server(disk, qmp, options.get("nbd") or None)
        export = f"hypersdk-restore-{secrets.token_hex(4)}"
        try:
            qmp.execute(
                "block-export-add",
                {
                    "type": "nbd",
                    "id": export,
                    "node-name": target.node,
                    "name": export,
                    "writable": True,
                },
            )
        except QmpCommandError as err:
            if "Permission conflict" in err.desc or "permissions" in err.desc:
                raise ConflictError(
                    f"{disk.name}: the VM's device does not share writes to its disk "
                    "(share-rw=off); shut the VM down and restore into its image file, "
                    "or give the device share-rw=on"
                ) from err
            raise
        disk._cleanup.push(f"remove export {export}", lambda: _del_export(qmp, export))
        disk._connect(uri, export)
        _refuse_running(qmp, locator)  # it may have been resumed meanwhile
    except BaseException:
        with contextlib.suppress(ProviderError):
            disk.close()
        raise
    return disk


def _refuse_running(qmp: QmpConnection, locator: str) -> None:
    if not qmp.has_command("query-status"):
        return  # qemu-storage-daemon: no guest
    status = qmp.execute("query-status")
    if status.get("running") or status.get("status") == "running":
        raise ConflictError(
            f"the VM at {locator} is running: pause it (QMP stop) or shut it down "
            "before restoring into its disk"
        )


def _pick(disks: list[_discovery.QemuDisk], key: str, locator: str) -> _discovery.QemuDisk:
    """The disk named ``key``, else the only disk."""
    found = _discovery.find(disks, key) if key else None
    if found is not None:
        return found
    if len(disks) == 1:
        return disks[0]
    keys = ", ".join(d.key for d in disks) or "none"
    if not disks:
        raise NotFoundError(f"{locator} has no disks")
    raise UsageError(f"{locator} has several disks ({keys}) and none is {key!r}")


def _nbd_server(disk: WritableDisk, qmp: QmpConnection, given: str | None) -> str:
    if given:
        return f"unix:{given}"
    sock = os.path.join(disk._folder(), "nbd.sock")
    try:
        qmp.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": sock}}})
    except QmpCommandError as err:
        if "already running" in err.desc:
            raise ConflictError(
                f"QEMU at {qmp.socket_path} already runs an NBD server that this restore "
                f"did not start; give its unix socket: qemu:{qmp.socket_path}?nbd=/path/to/sock"
            ) from err
        raise
    disk._cleanup.push("stop NBD server", lambda: qmp.execute("nbd-server-stop"))
    return f"unix:{sock}"


def _del_export(qmp: QmpConnection, export: str) -> None:
    with contextlib.suppress(QmpCommandError):  # already gone
        qmp.execute("block-export-del", {"id": export, "mode": "hard"})
    deadline = time.monotonic() + WAIT_TIMEOUT
    while any(e.get("id") == export for e in qmp.execute("query-block-exports")):
        if time.monotonic() > deadline:
            raise ProviderError(f"export {export} still listed after {WAIT_TIMEOUT:g} s")
        time.sleep(0.02)
