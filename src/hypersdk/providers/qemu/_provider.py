"""The provider facade: ``hypersdk.providers.base.Provider`` for QEMU.

``QmpProvider`` drives a running ``qemu-system-*`` or ``qemu-storage-daemon`` through its
QMP socket; ``Qcow2Provider`` works on a qcow2 file that no process has open. Both keep
one checkpoint bitmap per disk between exports: the bitmap's name is the change id.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

from hypersdk.errors import CbtUnavailable, ChangeIdInvalid, NotFoundError
from hypersdk.providers.base import (
    CbtStatus,
    ChangeIdCheck,
    DiskInfo,
    EstimatedChanges,
    VmIdentity,
)
from hypersdk.providers.qemu import _checkpoints, _discovery, _session, _tools
from hypersdk.providers.qemu._discovery import QemuDisk
from hypersdk.providers.qemu._qmp import QmpConnection

NULL_UUID = "00000000-0000-0000-0000-000000000000"


def _disk_info(disk: QemuDisk) -> DiskInfo:
    cur = _checkpoints.current(disk.bitmaps)
    return DiskInfo(
        key=disk.key,
        path=disk.file,
        capacity_bytes=disk.capacity,
        change_id=cur.name if cur else "",
        backing_info=f"{disk.format} node {disk.node}",
        cbt_supported=not disk.cbt_reason,
        cbt_reason=disk.cbt_reason,
    )


def _status(disks: list[QemuDisk]) -> CbtStatus:
    infos = [_disk_info(d) for d in disks]
    if not infos:
        return CbtStatus(False, infos, "no disks found")
    unsupported = [i for i in infos if not i.cbt_supported]
    if unsupported:
        first = unsupported[0]
        return CbtStatus(False, infos, f"disk {first.key}: {first.cbt_reason}")
    missing = [i.key for i in infos if not i.change_id]
    if missing:
        return CbtStatus(False, infos, "no usable checkpoint bitmap on " + ", ".join(missing))
    return CbtStatus(True, infos)


def _check(disks: list[QemuDisk], disk_key: str, change_id: str) -> ChangeIdCheck:
    disk = _discovery.find(disks, disk_key)
    if disk is None:
        return ChangeIdCheck(False, f"disk {disk_key} not found")
    return _checkpoints.check(disk.bitmaps, change_id)


def _require(disks: list[QemuDisk], since: Mapping[str, str]) -> list[tuple[QemuDisk, str]]:
    out = []
    for key, change_id in since.items():
        disk = _discovery.find(disks, key)
        if disk is None:
            raise NotFoundError(f"disk {key} not found")
        verdict = _checkpoints.check(disk.bitmaps, change_id)
        if not verdict.valid:
            raise ChangeIdInvalid(f"disk {key}: {verdict.reason}")
        out.append((disk, change_id))
    return out


def qcow2_vm_id(path: str) -> str:
    """The VM id of an offline image: its real path, hashed (so it can be computed from
    the locator alone, without opening the image)."""
    return "qcow2-" + hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:16]


class QmpProvider:
    """A running QEMU or qemu-storage-daemon, reached through its QMP socket."""

    def __init__(self, locator: str, qmp: QmpConnection, nbd_socket: str | None) -> None:
        self._locator = locator
        self._qmp = qmp
        self._nbd_socket = nbd_socket

    def disks(self) -> list[QemuDisk]:
        return _discovery.discover(self._qmp)

    def identity(self) -> VmIdentity:
        name = ""
        vm_id = ""
        if self._qmp.has_command("query-name"):
            name = str(self._qmp.execute("query-name").get("name", ""))
        if self._qmp.has_command("query-uuid"):
            uuid = str(self._qmp.execute("query-uuid").get("UUID", ""))
            if uuid and uuid != NULL_UUID:
                vm_id = uuid
        if not vm_id:
            # No identity of its own: the set of disk files is what stays the same.
            files = "\n".join(sorted(d.file for d in self.disks()))
            vm_id = "qemu-" + hashlib.sha256(files.encode()).hexdigest()[:16]
        if not name:
            name = os.path.basename(self._qmp.socket_path)
        return VmIdentity(vm_id=vm_id, name=name, platform="qemu", locator=self._locator)

    def cbt_status(self) -> CbtStatus:
        return _status(self.disks())

    def enable_cbt(self) -> None:
        disks = self.disks()
        for disk in disks:
            if disk.cbt_reason:
                raise CbtUnavailable(f"disk {disk.key}: cannot track changes: {disk.cbt_reason}")
        name = _checkpoints.new_name()
        actions: list[dict[str, object]] = [
            {
                "type": "block-dirty-bitmap-add",
                "data": {"node": d.node, "name": name, "persistent": True},
            }
            for d in disks
            if _checkpoints.current(d.bitmaps) is None
        ]
        if actions:
            self._qmp.transaction(actions)

    def disable_cbt(self) -> None:
        actions: list[dict[str, object]] = [
            {"type": "block-dirty-bitmap-remove", "data": {"node": d.node, "name": b.name}}
            for d in self.disks()
            for b in d.bitmaps
            if _checkpoints.is_ours(b.name)
        ]
        if actions:
            self._qmp.transaction(actions)

    def check_change_id(self, disk_key: str, change_id: str) -> ChangeIdCheck:
        return _check(self.disks(), disk_key, change_id)

    def estimate_changes(self, since: Mapping[str, str]) -> EstimatedChanges:
        counts: dict[str, int] = {}
        for disk, change_id in _require(self.disks(), since):
            bitmap = next(b for b in disk.bitmaps if b.name == change_id)
            counts[disk.key] = bitmap.count or 0
        return EstimatedChanges(per_disk=counts, exact=True)

    def open_backup(
        self, since: Mapping[str, str] | None, *, audit: bool = False
    ) -> _session.QmpBackupSession:
        session = _session.QmpBackupSession(self._qmp, self.disks(), since, self._nbd_socket, audit)
        return session.start()

    def backup_committed(self, change_ids: Mapping[str, str]) -> None:
        actions: list[dict[str, object]] = []
        for disk in self.disks():
            keep = change_ids.get(disk.key)
            if keep is None or not any(b.name == keep for b in disk.bitmaps):
                continue  # never drop the old checkpoints when the new one is missing
            actions += [
                {"type": "block-dirty-bitmap-remove", "data": {"node": disk.node, "name": n}}
                for n in _checkpoints.stale(disk.bitmaps, keep)
            ]
        if actions:
            self._qmp.transaction(actions)

    def close(self) -> None:
        self._qmp.close()

    def __enter__(self) -> QmpProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Qcow2Provider:
    """A qcow2 image that no process has open (a stopped VM's disk)."""

    def __init__(self, locator: str, path: str) -> None:
        self._locator = locator
        self._path = os.path.abspath(path)
        self._key = os.path.splitext(os.path.basename(self._path))[0] or "disk"

    def disk(self) -> QemuDisk:
        # Without -U: takes the shared lock, so an image a VM writes to is refused here.
        info = _tools.image_info(self._path)
        return QemuDisk(
            key=self._key,
            node="",
            file=self._path,
            capacity=int(info.get("virtual-size", 0)),
            format=str(info.get("format", "")),
            bitmaps=_checkpoints.from_image_info(info),
        )

    def identity(self) -> VmIdentity:
        vm_id = qcow2_vm_id(self._path)
        return VmIdentity(vm_id=vm_id, name=self._key, platform="qemu", locator=self._locator)

    def cbt_status(self) -> CbtStatus:
        return _status([self.disk()])

    def enable_cbt(self) -> None:
        disk = self.disk()
        if disk.cbt_reason:
            raise CbtUnavailable(f"disk {disk.key}: cannot track changes: {disk.cbt_reason}")
        if _checkpoints.current(disk.bitmaps) is None:
            _tools.bitmap(self._path, _checkpoints.new_name(), "--add")

    def disable_cbt(self) -> None:
        for b in self.disk().bitmaps:
            if _checkpoints.is_ours(b.name):
                _tools.bitmap(self._path, b.name, "--remove")

    def check_change_id(self, disk_key: str, change_id: str) -> ChangeIdCheck:
        return _check([self.disk()], disk_key, change_id)

    def estimate_changes(self, since: Mapping[str, str]) -> EstimatedChanges:
        counts = {
            disk.key: _session.dirty_bytes_offline(disk, change_id)
            for disk, change_id in _require([self.disk()], since)
        }
        return EstimatedChanges(per_disk=counts, exact=True)

    def open_backup(
        self, since: Mapping[str, str] | None, *, audit: bool = False
    ) -> _session.Qcow2BackupSession:
        disk = self.disk()
        if disk.cbt_reason:
            raise CbtUnavailable(f"disk {disk.key}: cannot back up: {disk.cbt_reason}")
        return _session.Qcow2BackupSession(disk, since, audit).start()

    def backup_committed(self, change_ids: Mapping[str, str]) -> None:
        disk = self.disk()
        keep = change_ids.get(disk.key)
        if keep is None or not any(b.name == keep for b in disk.bitmaps):
            return
        for name in _checkpoints.stale(disk.bitmaps, keep):
            _tools.bitmap(self._path, name, "--remove")

    def close(self) -> None:
        pass

    def __enter__(self) -> Qcow2Provider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
