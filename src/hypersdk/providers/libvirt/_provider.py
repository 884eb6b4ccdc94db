"""The provider facade: ``hypersdk.providers.base.Provider`` for a libvirt domain.

Changed block tracking is libvirt's checkpoints, one per export, named
``hypersdk-<UTC time>-<random>`` like the QEMU provider's bitmaps: the name is every
disk's change id. Checkpoints with other names (an operator's, virtnbdbackup's) are
never touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from hypersdk.errors import (
    CbtUnavailable,
    ChangeIdInvalid,
    NotFoundError,
    ProviderError,
    UsageError,
)
from hypersdk.providers.base import (
    CbtStatus,
    ChangeIdCheck,
    DiskInfo,
    EstimatedChanges,
    VmIdentity,
)
from hypersdk.providers.cleanup import CleanupStack
from hypersdk.providers.libvirt import _connect, _domain, _session
from hypersdk.providers.libvirt._connect import calling
from hypersdk.providers.qemu import _checkpoints, _discovery, _tools
from hypersdk.providers.qemu import _session as _qemu_session


class LibvirtProvider:
    """One domain of one libvirt connection, running or shut off."""

    def __init__(self, locator: str, uri: str, conn: Any, dom: Any) -> None:
        self._locator = locator
        self._uri = uri
        self._conn = conn
        self._dom = dom

    # --- what the domain has -----------------------------------------------------------

    def _active(self) -> bool:
        with calling("reading the domain state"):
            return bool(self._dom.isActive())

    def disks(self) -> list[_domain.Disk]:
        with calling("reading the domain"):
            disks = _domain.disks(self._dom.XMLDesc(0))
            for d in disks:
                d.capacity = int(self._dom.blockInfo(d.key)[0])
        return disks

    def checkpoints(self) -> list[_domain.Checkpoint]:
        """Our checkpoints, oldest first, with dirty sizes when the domain runs."""
        lv = _connect.lib()
        flags = lv.VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN
        out = []
        with calling("listing checkpoints"):
            found = self._dom.listAllCheckpoints(0)
        for cp in found:
            if not _checkpoints.is_ours(cp.getName()):
                continue
            with calling(f"reading checkpoint {cp.getName()}"):
                xml = cp.getXMLDesc(0)
            info = _domain.checkpoint(xml)
            if self._active():
                # The size query fails when a bitmap went missing behind libvirt's back.
                try:
                    sized = _domain.checkpoint(
                        cp.getXMLDesc(flags | lv.VIR_DOMAIN_CHECKPOINT_XML_SIZE)
                    )
                    info.sizes = sized.sizes
                except lv.libvirtError:
                    info.sizes = {}
            out.append(info)
        return sorted(out, key=lambda c: (c.created, c.name))

    def _image_bitmaps(self, disk: _domain.Disk) -> list[_checkpoints.Bitmap]:
        return _checkpoints.from_image_info(_tools.image_info(disk.file, force_share=True))

    def _check(
        self, disks: list[_domain.Disk], cps: list[_domain.Checkpoint], key: str, change_id: str
    ) -> ChangeIdCheck:
        disk = next((d for d in disks if d.key == key), None)
        if disk is None:
            return ChangeIdCheck(False, f"disk {key} not found")
        cp = next((c for c in cps if c.name == change_id), None)
        if cp is None:
            return ChangeIdCheck(False, f"libvirt checkpoint {change_id} does not exist")
        if key not in cp.bitmaps:
            return ChangeIdCheck(False, f"libvirt checkpoint {change_id} does not cover disk {key}")
        then = cp.files.get(key, "")
        if then and then != disk.file:
            return ChangeIdCheck(
                False, f"disk {key} is now {disk.file}; checkpoint {change_id} saw {then}"
            )
        if self._active():
            if key not in cp.sizes:
                return ChangeIdCheck(
                    False, f"the bitmap of checkpoint {change_id} is missing on disk {key}"
                )
            return ChangeIdCheck(True)
        return _checkpoints.check(self._image_bitmaps(disk), cp.bitmaps[key])

    def _require(self, since: Mapping[str, str]) -> list[_domain.Disk]:
        disks = self.disks()
        cps = self.checkpoints()
        for key, change_id in since.items():
            verdict = self._check(disks, cps, key, change_id)
            if not verdict.valid:
                if verdict.reason.endswith("not found"):
                    raise NotFoundError(verdict.reason)
                raise ChangeIdInvalid(f"disk {key}: {verdict.reason}")
        return disks

    def _require_local(self, what: str) -> None:
        """Reading disks needs this host: the NBD socket and the images are local files."""
        if urlsplit(self._uri).hostname:
            raise UsageError(
                f"{what} needs the domain's host: libvirt at {self._uri} is remote (its NBD "
                "socket and disk images are files there); run hyperexport on that host"
            )

    def _target(self, disks: list[_domain.Disk]) -> _session.Target:
        return _session.Target(self._dom, self.identity().vm_id, self._uri, disks)

    # --- Provider ----------------------------------------------------------------------

    def identity(self) -> VmIdentity:
        with calling("reading the domain"):
            uuid, name = str(self._dom.UUIDString()), str(self._dom.name())
        return VmIdentity(vm_id=uuid, name=name, platform="libvirt", locator=self._locator)

    def cbt_status(self) -> CbtStatus:
        disks = self.disks()
        cps = self.checkpoints()
        latest = cps[-1] if cps else None
        infos = []
        for d in disks:
            ok = latest is not None and self._check(disks, cps, d.key, latest.name).valid
            mine = [c.name for c in cps if d.key in c.bitmaps]
            infos.append(
                DiskInfo(
                    key=d.key,
                    path=d.file,
                    capacity_bytes=d.capacity,
                    change_id=latest.name if ok and latest else "",
                    backing_info=f"{d.format}; checkpoints: {', '.join(mine) or 'none'}",
                    cbt_supported=not d.cbt_reason,
                    cbt_reason=d.cbt_reason,
                )
            )
        if not infos:
            return CbtStatus(False, infos, "the domain has no disks")
        bad = next((i for i in infos if not i.cbt_supported), None)
        if bad is not None:
            return CbtStatus(False, infos, f"disk {bad.key}: {bad.cbt_reason}")
        missing = [i.key for i in infos if not i.change_id]
        if missing:
            return CbtStatus(False, infos, "no usable libvirt checkpoint on " + ", ".join(missing))
        return CbtStatus(True, infos)

    def enable_cbt(self) -> None:
        disks = self.disks()
        for d in disks:
            if d.cbt_reason:
                raise CbtUnavailable(f"disk {d.key}: cannot track changes: {d.cbt_reason}")
        if self.cbt_status().enabled:
            return
        name = _checkpoints.new_name()
        if not self._active():
            self._require_local("a checkpoint of a shut-off domain")
            undo = CleanupStack()
            try:
                _session.add_offline_checkpoint(self._target(disks), name, undo)
            except BaseException:
                undo.run()
                raise
            return
        xml = "<domaincheckpoint><name>{}</name><disks>{}</disks></domaincheckpoint>".format(
            name, "".join(f"<disk name='{d.key}' checkpoint='bitmap'/>" for d in disks)
        )
        with calling("creating a checkpoint"):
            self._dom.checkpointCreateXML(xml, 0)

    def disable_cbt(self) -> None:
        self._delete([c.name for c in reversed(self.checkpoints())])

    def _delete(self, names: list[str]) -> None:
        active = self._active()
        for name in names:
            if active:
                _session._delete_checkpoint(self._dom, name)
            else:
                self._require_local("deleting a checkpoint of a shut-off domain")
                _session.forget_checkpoint(self._dom, name)

    def check_change_id(self, disk_key: str, change_id: str) -> ChangeIdCheck:
        return self._check(self.disks(), self.checkpoints(), disk_key, change_id)

    def estimate_changes(self, since: Mapping[str, str]) -> EstimatedChanges:
        disks = self._require(since)
        counts: dict[str, int] = {}
        if self._active():
            cps = {c.name: c for c in self.checkpoints()}
            for key, change_id in since.items():
                counts[key] = cps[change_id].sizes.get(key, 0)
            return EstimatedChanges(per_disk=counts, exact=True)
        self._require_local("counting the changes of a shut-off domain")
        cps = {c.name: c for c in self.checkpoints()}
        for key, change_id in since.items():
            disk = next(d for d in disks if d.key == key)
            qdisk = _discovery.QemuDisk(
                key=disk.key, node="", file=disk.file, capacity=disk.capacity, format=disk.format
            )
            counts[key] = _qemu_session.dirty_bytes_offline(qdisk, cps[change_id].bitmaps[key])
        return EstimatedChanges(per_disk=counts, exact=True)

    def open_backup(
        self, since: Mapping[str, str] | None, *, audit: bool = False
    ) -> _session.PullBackupSession | _session.OfflineBackupSession:
        self._require_local("a backup")
        disks = self._require(since or {})
        for d in disks:
            if d.cbt_reason:
                raise CbtUnavailable(f"disk {d.key}: cannot back up: {d.cbt_reason}")
        if not disks:
            raise ProviderError("the domain has no disks to back up")
        target = self._target(disks)
        if self._active():
            return _session.PullBackupSession(target, since, audit).start()
        return _session.OfflineBackupSession(target, since, audit).start()

    def backup_committed(self, change_ids: Mapping[str, str]) -> None:
        keep = set(change_ids.values())
        cps = self.checkpoints()
        if not keep or not keep <= {c.name for c in cps}:
            return  # never drop the old checkpoints when the new one is missing
        self._delete([c.name for c in reversed(cps) if c.name not in keep])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()

    def __enter__(self) -> LibvirtProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
