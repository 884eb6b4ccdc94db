"""The fleet limits' keys of a vSphere VM, from a real vcsim lab: the ESXi host it runs on
and the datastore of its files, the same ones the backup policies' listing reports."""

from __future__ import annotations

from typing import Any

from hypersdk.daemon.fleet import FleetLimits
from hypersdk.fleet.limits import Slot, placement
from hypersdk.lab import VcsimLab
from hypersdk.providers.vsphere import list_vms
from tests.vsphere.conftest import lab, lab_binary, provider_for, settings_of  # noqa: F401


def test_a_vsphere_vm_is_limited_by_its_host_and_datastore(
    lab: VcsimLab,  # noqa: F811
    provider_for: Any,  # noqa: F811
) -> None:
    listed = {v.path: v for v in list_vms(settings_of(lab))}["/DC0/vm/small"]
    where = placement(provider_for("/DC0/vm/small"))
    assert where.host and where.datastore
    assert (where.host, where.datastore) == (listed.host, listed.datastore)
    assert where.slots(FleetLimits(datastore=2, host=3)) == [
        Slot("datastore", listed.datastore, 2),
        Slot("host", listed.host, 3),
    ]
