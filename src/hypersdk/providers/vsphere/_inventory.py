"""Find a VM by inventory path and describe its disks the way the spec shows them.

Pure reads of pyVmomi objects; nothing here changes the VM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

from hypersdk.errors import NotFoundError, UsageError

MIN_HW_VERSION = 7
_DS_PATH = re.compile(r"^\[(?P<ds>[^\]]+)\]\s*(?P<path>.+)$")
_DELTA_NAME = re.compile(r"-\d{6}\.vmdk$")


@dataclass(frozen=True, slots=True)
class VsphereDisk:
    """One virtual disk of a VM or of a snapshot's configuration."""

    device_key: int
    file_name: str  # "[LocalDS_0] web/web.vmdk"
    datastore: str
    capacity: int
    change_id: str  # "" without CBT
    backing_type: str  # "FlatVer2", "SeSparse", "RawDiskMapping", ...
    disk_mode: str
    has_parent: bool
    compatibility_mode: str  # RDM only: "physicalMode" / "virtualMode"
    cbt_reason: str  # why this disk cannot be tracked, "" when it can

    @property
    def key(self) -> str:
        return f"disk-{self.device_key}"

    def flat_path(self) -> tuple[str, str]:
        """(datastore, path of the flat extent inside it): ``web/web.vmdk`` ->
        ``web/web-flat.vmdk``, the name ESXi gives the extent of a flat disk."""
        m = _DS_PATH.match(self.file_name)
        if not m:
            raise UsageError(f"disk {self.key}: unexpected datastore path {self.file_name!r}")
        path = m.group("path").strip()
        if path.endswith("-flat.vmdk"):
            return m.group("ds"), path
        return m.group("ds"), path.removesuffix(".vmdk") + "-flat.vmdk"

    def read_refusal(self) -> str:
        """Why this disk's data cannot be read over /folder, "" when it can."""
        if self.backing_type.startswith("RawDiskMapping"):
            return (
                f"disk {self.key} is a raw device mapping ({self.compatibility_mode}): "
                "its data is on a LUN, not in a datastore file"
            )
        if self.disk_mode.startswith("independent"):
            return (
                f"disk {self.key} is independent ({self.disk_mode}): snapshots do not freeze "
                "it; change it to dependent mode to back it up"
            )
        if self.backing_type != "FlatVer2" or self.has_parent or _DELTA_NAME.search(self.file_name):
            return (
                f"disk {self.key} is a {self.backing_type} delta/sparse disk "
                f"({self.file_name}): the VM already has snapshots, and a delta disk cannot be "
                "read over HTTPS; delete or consolidate the VM's snapshots, then export again"
            )
        return ""


def backing_name(backing: Any) -> str:
    """``vim.vm.device.VirtualDisk.FlatVer2BackingInfo`` -> ``FlatVer2``."""
    name = type(backing).__name__.rsplit(".", 1)[-1]
    return name.removesuffix("BackingInfo") or "unknown"


def _capacity(dev: Any) -> int:
    by_bytes = int(getattr(dev, "capacityInBytes", 0) or 0)
    by_kb = int(getattr(dev, "capacityInKB", 0) or 0) * 1024
    return max(by_bytes, by_kb)


def _disk(dev: Any, vm_reason: str) -> VsphereDisk:
    b = dev.backing
    btype = backing_name(b)
    mode = str(getattr(b, "diskMode", "") or "")
    compat = str(getattr(b, "compatibilityMode", "") or "")
    reason = vm_reason
    if btype.startswith("RawDiskMapping") and compat == "physicalMode":
        reason = "physical compatibility RDM: vSphere does not track its changes"
    elif mode.startswith("independent"):
        reason = f"independent disk ({mode}): vSphere does not track its changes"
    ds = getattr(b, "datastore", None)
    return VsphereDisk(
        device_key=int(dev.key),
        file_name=str(getattr(b, "fileName", "") or ""),
        datastore=str(ds.name) if ds is not None else "",
        capacity=_capacity(dev),
        change_id=str(getattr(b, "changeId", "") or ""),
        backing_type=btype,
        disk_mode=mode,
        has_parent=getattr(b, "parent", None) is not None,
        compatibility_mode=compat,
        cbt_reason=reason,
    )


def hw_version(vm: Any) -> int:
    text = str(getattr(vm.config, "version", "") or "")
    m = re.match(r"vmx-(\d+)$", text)
    return int(m.group(1)) if m else 0


def vm_cbt_reason(vm: Any) -> str:
    """Why this VM cannot use CBT at all, "" when it can."""
    version = hw_version(vm)
    if version and version < MIN_HW_VERSION:
        return f"hardware version vmx-{version:02d} is below vmx-07 (upgrade the VM's hardware)"
    capability = getattr(vm, "capability", None)
    if capability is not None and getattr(capability, "changeTrackingSupported", None) is False:
        return "the VM reports capability.changeTrackingSupported = false"
    return ""


def disks(config: Any, vm_reason: str = "") -> list[VsphereDisk]:
    """The virtual disks of a ``config`` (the VM's or a snapshot's), by device key."""
    devices = config.hardware.device or []
    found = [_disk(d, vm_reason) for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]
    return sorted(found, key=lambda d: d.device_key)


def find_vm(content: Any, locator: str) -> Any:
    """The VM at an inventory path (``/DC/vm/folder/name`` or ``DC/vm/...``)."""
    path = locator.strip().strip("/")
    if not path:
        raise UsageError("--vm is empty: give an inventory path like /Datacenter/vm/name")
    obj = content.searchIndex.FindByInventoryPath(path)
    if obj is None:
        raise NotFoundError(f"VM {locator} not found (no such inventory path)")
    if not isinstance(obj, vim.VirtualMachine):
        raise NotFoundError(f"{locator} is a {type(obj).__name__.rsplit('.', 1)[-1]}, not a VM")
    return obj


def datacenter_path(vm: Any) -> str:
    """The inventory path of the VM's datacenter (``dcPath`` of /folder URLs)."""
    obj = vm.parent
    while obj is not None and not isinstance(obj, vim.Datacenter):
        obj = obj.parent
    if obj is None:
        raise NotFoundError(f"VM {vm.name} is not inside a datacenter")
    names = []
    while obj is not None and isinstance(obj.parent, vim.ManagedEntity):
        names.append(str(obj.name))
        obj = obj.parent
    return "/".join(reversed(names))


def snapshot_tree(vm: Any) -> list[Any]:
    """Every snapshot of the VM (``VirtualMachineSnapshotTree`` nodes), depth first."""
    info = vm.snapshot
    out: list[Any] = []
    stack = list(reversed(info.rootSnapshotList or [])) if info is not None else []
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(node.childSnapshotList or []))
    return out
