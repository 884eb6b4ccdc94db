"""The VMs of a vCenter with where each runs: what backup policies expand a folder or a
glob against at run time, and the placement keys (ESXi host, datastore) of their
per-host and per-datastore limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

from hypersdk.providers.connection import VsphereSettings
from hypersdk.providers.vsphere._connection import VsphereConnection
from hypersdk.providers.vsphere._faults import translate


@dataclass(frozen=True)
class InventoryVm:
    path: str  # the inventory path, "/DC/vm/folder/name"
    host: str | None  # the ESXi host it runs on
    datastore: str | None  # the datastore of its files (the first one)


def _path(obj: Any) -> str:
    names = []
    while obj is not None and isinstance(obj, vim.ManagedEntity) and obj.parent is not None:
        names.append(str(obj.name))
        obj = obj.parent
    return "/" + "/".join(reversed(names))


def list_vms(settings: VsphereSettings) -> list[InventoryVm]:
    """Every VM of the server (templates left out), by inventory path."""
    conn = VsphereConnection.connect(settings)
    try:
        with translate("listing the VMs", conn.endpoint.host):
            content = conn.content
            view = content.viewManager.CreateContainerView(
                content.rootFolder, [vim.VirtualMachine], True
            )
            try:
                found = []
                for vm in view.view:
                    config = vm.config
                    if config is not None and config.template:
                        continue
                    host = vm.runtime.host
                    stores = vm.datastore or []
                    found.append(
                        InventoryVm(
                            _path(vm),
                            str(host.name) if host is not None else None,
                            str(stores[0].name) if stores else None,
                        )
                    )
            finally:
                view.Destroy()
        return sorted(found, key=lambda v: v.path)
    finally:
        conn.close()
