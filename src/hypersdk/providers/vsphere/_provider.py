"""The provider facade: ``hypersdk.providers.base.Provider`` for one vSphere VM.

Only ``open_backup`` (an export) removes leftover snapshots of earlier runs. Status and
change id checks only read; ``estimate_changes`` takes and removes a short snapshot of its
own and nothing else; a CBT change's stun snapshot is registered like a session's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from pyVmomi import vim

from hypersdk.errors import CbtUnavailable, NotFoundError
from hypersdk.providers.base import (
    CbtStatus,
    ChangeIdCheck,
    DiskInfo,
    EstimatedChanges,
    VmIdentity,
)
from hypersdk.providers.connection import VsphereSettings
from hypersdk.providers.vsphere import _changeid, _inventory, _snapshots
from hypersdk.providers.vsphere._connection import VsphereConnection
from hypersdk.providers.vsphere._inventory import VsphereDisk
from hypersdk.providers.vsphere._live import LIVE
from hypersdk.providers.vsphere._session import DEFAULT_POOL, VsphereBackupSession

log = logging.getLogger(__name__)


def _disk_info(d: VsphereDisk) -> DiskInfo:
    return DiskInfo(
        key=d.key,
        path=d.file_name,
        capacity_bytes=d.capacity,
        change_id=d.change_id,
        backing_info=d.backing_type,
        cbt_supported=not d.cbt_reason,
        cbt_reason=d.cbt_reason,
    )


class VsphereProvider:
    """One VM of a vCenter or ESXi host, reached with one pyVmomi session."""

    def __init__(
        self,
        locator: str,
        conn: VsphereConnection,
        *,
        quiesce: bool = False,
        pool: int = DEFAULT_POOL,
        on_message: Callable[[str], None] | None = None,
    ) -> None:
        self._locator = locator
        self._conn = conn
        self.quiesce = quiesce
        self.pool = pool
        self.on_message = on_message
        try:
            with conn.translate(f"looking up VM {locator}"):
                self._vm = _inventory.find_vm(conn.content, locator)
        except BaseException:
            conn.close()
            raise

    @property
    def vm(self) -> Any:
        return self._vm

    def _with(self, what: str) -> Any:
        return self._conn.translate(f"{what} of VM {self._locator}")

    def disks(self) -> list[VsphereDisk]:
        with self._with("reading the disks"):
            return _inventory.disks(self._vm.config, _inventory.vm_cbt_reason(self._vm))

    def identity(self) -> VmIdentity:
        with self._with("reading the identity"):
            cfg = self._vm.config
            vm_id = str(getattr(cfg, "instanceUuid", "") or "")
            if not vm_id:
                about = self._conn.content.about
                vm_id = f"vsphere-{about.instanceUuid or self._conn.endpoint.host}-{self._vm._moId}"
            return VmIdentity(
                vm_id=vm_id, name=str(self._vm.name), platform="vsphere", locator=self._locator
            )

    def cbt_status(self) -> CbtStatus:
        with self._with("reading CBT status"):
            vm_reason = _inventory.vm_cbt_reason(self._vm)
            enabled = bool(self._vm.config.changeTrackingEnabled)
            disks = _inventory.disks(self._vm.config, vm_reason)
        infos = [_disk_info(d) for d in disks]
        if vm_reason:
            return CbtStatus(False, infos, f"CBT cannot be used on this VM: {vm_reason}")
        if not enabled:
            return CbtStatus(False, infos, "Changed block tracking (CBT) is not enabled on this VM")
        if not infos:
            return CbtStatus(False, infos, "the VM has no virtual disks")
        unsupported = [i for i in infos if not i.cbt_supported]
        if unsupported:
            first = unsupported[0]
            return CbtStatus(
                False, infos, f"Disk {first.key} cannot be tracked: {first.cbt_reason}"
            )
        inactive = [i.key for i in infos if not i.change_id]
        if inactive:
            return CbtStatus(
                False,
                infos,
                "CBT is enabled but not active yet on "
                + ", ".join(inactive)
                + " (it starts at the next snapshot or power on; --enable-cbt does that)",
            )
        return CbtStatus(True, infos)

    def _set_cbt(self, on: bool) -> None:
        word = "enabling" if on else "disabling"
        with self._with(f"{word} CBT"):
            vm = self._vm
            if on:
                reason = _inventory.vm_cbt_reason(vm)
                if reason:
                    raise CbtUnavailable(f"cannot enable CBT on VM {vm.name}: {reason}")
            already = bool(vm.config.changeTrackingEnabled) == on
            tracked = [d for d in _inventory.disks(vm.config, "") if not d.cbt_reason]
            active = all(bool(d.change_id) == on for d in tracked)
            if already and active:
                return
            if not already:
                spec = vim.vm.ConfigSpec(changeTrackingEnabled=on)  # type: ignore[no-untyped-call]
                task = vm.ReconfigVM_Task(spec)
                _snapshots.wait_task(task, f"{word} CBT on VM {vm.name}")
            if str(vm.runtime.powerState) == "poweredOn":
                self._stun()

    def _stun(self) -> None:
        """A CBT change takes effect at a stun/unstun: create and remove a snapshot."""
        vm = self._vm
        name = _snapshots.new_name(_snapshots.STUN_PREFIX)
        session_id = _snapshots.new_session_id()
        LIVE.register(session_id, name)
        try:
            with LIVE.vm_guard(self._conn.vm_key(vm)):
                try:
                    snap = _snapshots.create(vm, name, session_id)
                except BaseException:
                    _snapshots.remove_by_name(vm, name)
                    raise
            _snapshots.remove(snap, name)
        finally:
            LIVE.unregister(name)

    def enable_cbt(self) -> None:
        self._set_cbt(True)

    def disable_cbt(self) -> None:
        self._set_cbt(False)

    def check_change_id(self, disk_key: str, change_id: str) -> ChangeIdCheck:
        with self._with("checking change ids"):
            enabled = bool(self._vm.config.changeTrackingEnabled)
            disks = {d.key: d for d in _inventory.disks(self._vm.config)}
        disk = disks.get(disk_key)
        current = disk.change_id if disk is not None else None
        return _changeid.check(disk_key, change_id, current, tracking=enabled)

    def estimate_changes(self, since: Mapping[str, str]) -> EstimatedChanges:
        """Exact: a short-lived snapshot (always removed) and QueryChangedDiskAreas
        against it, without reading data. A powered-on VM cannot be queried without one.
        Removes no snapshot it did not make: a VM with any snapshot is refused."""
        with self._open(since, read_data=False, sweep=False) as session:
            per_disk = {
                d.key: sum(e.length for e in d.changed or [])
                if d.changed is not None
                else d.capacity_bytes
                for d in session.disks
            }
        missing = set(since) - set(per_disk)
        if missing:
            raise NotFoundError(f"disk {sorted(missing)[0]} not found")
        return EstimatedChanges(per_disk=per_disk, exact=True)

    def _open(
        self,
        since: Mapping[str, str] | None,
        *,
        read_data: bool,
        sweep: bool,
        audit: bool = False,
    ) -> VsphereBackupSession:
        session = VsphereBackupSession(
            self._conn,
            self._vm,
            since,
            audit=audit,
            quiesce=self.quiesce,
            read_data=read_data,
            sweep=sweep,
            pool=self.pool,
            on_message=self.on_message,
        )
        return session.start()

    def open_backup(
        self, since: Mapping[str, str] | None, *, audit: bool = False
    ) -> VsphereBackupSession:
        return self._open(since, read_data=True, sweep=True, audit=audit)

    def backup_committed(self, change_ids: Mapping[str, str]) -> None:
        """Nothing to drop: vSphere keeps the tracking state itself."""

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> VsphereProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_vsphere_provider(
    locator: str,
    settings: VsphereSettings,
    *,
    quiesce: bool = False,
    pool: int = DEFAULT_POOL,
    on_message: Callable[[str], None] | None = None,
) -> VsphereProvider:
    """Log in to ``settings.server`` and find the VM at inventory path ``locator``."""
    conn = VsphereConnection.connect(settings)
    return VsphereProvider(locator, conn, quiesce=quiesce, pool=pool, on_message=on_message)
