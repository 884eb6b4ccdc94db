"""Test rigs: a real qemu-storage-daemon and a real qemu-system-x86_64, started in a temp
folder and stopped by their pid (SIGTERM, then SIGKILL), never by name.

    with QemuStorageDaemon(tmp_path, size=64 * MiB) as qsd:
        qsd.qmp("query-block-exports")
        qsd.write(0, b"x" * 65536)          # "guest" writes through the writable export
        provider = open_qemu_provider(qsd.locator)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from qemu.qmp.legacy import QEMUMonitorProtocol

from hypersdk.processes import stop_process

MiB = 1024 * 1024
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def have(binary: str) -> bool:
    return shutil.which(binary) is not None


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def create_qcow2(path: Path, size: int) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)], check=True)


def _socket_accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


class _Process:
    """A QEMU process with a QMP unix socket, stopped by its pid."""

    name = "qemu"

    def __init__(self, workdir: Path, size: int, node_name: str, image: Path | None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.size = size
        self.node_name = node_name
        self.disk_path = image or self.workdir / f"{node_name}.qcow2"
        self.qmp_path = self.workdir / "qmp.sock"  # for the code under test
        self.test_qmp_path = self.workdir / "test-qmp.sock"  # the rig's own monitor
        self.log_path = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._monitor: QEMUMonitorProtocol | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _monitor_args(self, dash: str) -> list[str]:
        """Two QMP monitors: a QMP socket serves one client at a time, so the rig keeps
        its own and leaves ``qmp_path`` to the code under test."""
        args: list[str] = []
        for i, path in enumerate((self.qmp_path, self.test_qmp_path)):
            args += [f"{dash}chardev", f"socket,id=qmp{i},path={path},server=on,wait=off"]
            if dash == "--":
                args += ["--monitor", f"chardev=qmp{i}"]
            else:
                args += ["-mon", f"chardev=qmp{i},mode=control"]
        return args

    def _prepare(self) -> None:
        if not self.disk_path.exists():
            create_qcow2(self.disk_path, self.size)

    def _blockdev_args(self, dash: str) -> list[str]:
        """The disk as a file node and a qcow2 node ``node_name``; discard=unmap so a
        guest trim really frees clusters (and reads back as a hole)."""
        node, disk = self.node_name, self.disk_path
        return [
            f"{dash}blockdev",
            f"driver=file,node-name={node}-file,filename={disk},discard=unmap",
            f"{dash}blockdev",
            f"driver=qcow2,node-name={node},file={node}-file,discard=unmap",
        ]

    def start(self) -> None:
        self._prepare()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self._argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not open its sockets in time")
            time.sleep(0.02)

    def _ready(self) -> bool:
        return _socket_accepts(self.qmp_path) and self.test_qmp_path.exists()

    def qmp(self, command: str, **arguments: Any) -> Any:
        """Run a QMP command on the rig's own monitor connection (independent of the code
        under test)."""
        if self._monitor is None:
            self._monitor = QEMUMonitorProtocol(str(self.test_qmp_path))
            self._monitor.connect()
        return self._monitor.cmd(command, **arguments)

    def close_monitor(self) -> None:
        mon, self._monitor = self._monitor, None
        if mon is not None:
            with contextlib.suppress(Exception):
                mon.close()

    def stop(self) -> None:
        self.close_monitor()
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, grace=STOP_TIMEOUT)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- what tests check ---------------------------------------------------------

    def node_names(self) -> set[str]:
        return {n["node-name"] for n in self.qmp("query-named-block-nodes", flat=True)}

    def export_ids(self) -> set[str]:
        return {e["id"] for e in self.qmp("query-block-exports")}

    def job_ids(self) -> set[str]:
        return {j["device"] for j in self.qmp("query-block-jobs")}

    def bitmaps(self, node: str) -> dict[str, dict[str, Any]]:
        for n in self.qmp("query-named-block-nodes", flat=True):
            if n["node-name"] == node:
                return {b["name"]: b for b in n.get("dirty-bitmaps", []) if "name" in b}
        raise KeyError(node)


class QemuStorageDaemon(_Process):
    """qemu-storage-daemon with one qcow2 disk (node ``node_name``) and an NBD server on
    a unix socket that serves the disk WRITABLE as export ``export_name`` (without
    ``nbd_server`` it runs no NBD server, like a VM: the code under test starts one)."""

    name = "qemu-storage-daemon"

    def __init__(
        self,
        workdir: Path,
        size: int = 64 * MiB,
        node_name: str = "disk0",
        image: Path | None = None,
        nbd_server: bool = True,
    ) -> None:
        super().__init__(workdir, size, node_name, image)
        self.export_name = "guest"
        self.nbd_path = self.workdir / "nbd.sock"
        self.nbd_server = nbd_server
        self._guest: Any = None

    @property
    def locator(self) -> str:
        if not self.nbd_server:
            return f"qemu:{self.qmp_path}"
        return f"qemu:{self.qmp_path}?nbd={self.nbd_path}"

    @property
    def nbd_uri(self) -> str:
        return f"nbd+unix:///{self.export_name}?socket={self.nbd_path}"

    def _ready(self) -> bool:
        # The daemon makes its monitors before its NBD server: on a loaded machine a
        # test that writes at once could find no NBD socket yet.
        return super()._ready() and (not self.nbd_server or _socket_accepts(self.nbd_path))

    def _argv(self) -> list[str]:
        argv = ["qemu-storage-daemon", *self._monitor_args("--"), *self._blockdev_args("--")]
        if self.nbd_server:
            argv += [
                "--nbd-server", f"addr.type=unix,addr.path={self.nbd_path}",
                "--export", f"type=nbd,id={self.export_name},node-name={self.node_name},"
                f"name={self.export_name},writable=on",
            ]  # fmt: skip
        return argv

    # --- "guest" I/O through the writable NBD export ---------------------------------

    def guest(self) -> Any:
        """An NBD client on the writable export (thread-safe, shared by the test)."""
        if self._guest is None:
            from hypersdk.nbd import NbdClient

            self._guest = NbdClient.connect(f"unix:{self.nbd_path}", export_name=self.export_name)
        return self._guest

    def write(self, offset: int, data: bytes) -> None:
        self.guest().pwrite(offset, data)

    def zero(self, offset: int, length: int) -> None:
        self.guest().write_zeroes(offset, length)

    def trim(self, offset: int, length: int) -> None:
        self.guest().trim(offset, length)

    def flush(self) -> None:
        self.guest().flush()

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.guest().pread(offset, length))

    def stop(self) -> None:
        guest, self._guest = self._guest, None
        if guest is not None:
            with contextlib.suppress(Exception):
                guest.close()
        super().stop()


class QemuVm(_Process):
    """qemu-system-x86_64 without a guest OS (it sits in the firmware) with one qcow2
    disk as ``-blockdev`` node ``node_name`` on a virtio-blk device ``device_id``."""

    name = "qemu-system-x86_64"

    def __init__(
        self,
        workdir: Path,
        size: int = 64 * MiB,
        node_name: str = "disk0",
        device_id: str = "vda",
        bus: str = "virtio",
    ) -> None:
        super().__init__(workdir, size, node_name, None)
        self.device_id = device_id
        self.bus = bus

    @property
    def locator(self) -> str:
        return f"qemu:{self.qmp_path}"

    @property
    def accel(self) -> str:
        return "kvm" if kvm_usable() else "tcg"

    def _argv(self) -> list[str]:
        device = (
            f"virtio-blk-pci,drive={self.node_name},id={self.device_id}"
            if self.bus == "virtio"
            else f"ide-hd,drive={self.node_name},id={self.device_id},bus=ide.0"
        )
        return [
            "qemu-system-x86_64",
            "-nodefaults", "-display", "none", "-machine", f"q35,accel={self.accel}",
            "-m", "64", "-smp", "1",
            *self._blockdev_args("-"),
            "-device", device,
            *self._monitor_args("-"),
        ]  # fmt: skip

    def io(self, command: str) -> str:
        """Run a qemu-io command on the guest's disk through the VM's own block layer
        (``write -P 0xab 0 64k``), as if the guest wrote it."""
        qdev = self.device_id if self.bus != "virtio" else f"{self.device_id}/virtio-backend"
        line = f'qemu-io -d {qdev} "{command}"'
        out = str(self.qmp("human-monitor-command", **{"command-line": line}))
        if "error" in out.lower() or "not found" in out.lower() or "usage" in out.lower():
            raise RuntimeError(f"qemu-io {command!r}: {out.strip()}")
        return out
