"""Disk files of the vSphere lab: real sizes, /folder reads with Range, reconfiguration."""

from __future__ import annotations

import http.cookies
from typing import Any

import httpx
import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim

from hypersdk.errors import NotFoundError, UsageError
from hypersdk.lab import VcsimLab
from tests.lab.helpers import CHANGE_ID, disks, enable_cbt, find_vm, remove_snapshot, snapshot


def session_cookie(si: Any) -> dict[str, str]:
    jar = http.cookies.SimpleCookie()
    jar.load(si._stub.cookie)
    return {name: morsel.value for name, morsel in jar.items()}


def test_folder_get_with_range_and_session_cookie(si: Any, lab: VcsimLab) -> None:
    path = "/DC0/vm/small"
    data = lab.write(path, 3 << 20, length=100_000, seed=1)
    disk = lab.vm(path).disk()
    url = lab.folder_url(disk)
    cookies = session_cookie(si)
    with httpx.Client(verify=False, cookies=cookies) as client:
        part = client.get(url, headers={"Range": f"bytes={(3 << 20) + 10}-{(3 << 20) + 4105}"})
        assert part.status_code == 206
        assert part.content == data[10:4106]
        full = client.get(url)
        assert full.status_code == 200
        assert len(full.content) == disk.capacity_bytes == 16 << 20
        assert full.content[3 << 20 : (3 << 20) + len(data)] == data
    # Like vCenter: no datastore file access without a session.
    assert httpx.get(url, verify=False).status_code == 401
    assert httpx.get(url, verify=False, cookies={"vmware_soap_session": "x"}).status_code == 401


def test_reconfigure_grows_disk_and_adds_a_disk_with_its_own_file(si: Any, lab: VcsimLab) -> None:
    path = "/DC0/vm/two-disks"
    vm = find_vm(si, path)
    enable_cbt(vm)
    remove_snapshot(snapshot(vm, "activate"))  # CBT becomes active at the stun
    first, second = disks(vm.config)
    first.capacityInBytes = 48 << 20  # grown by bytes...
    grow = vim.vm.device.VirtualDeviceSpec(operation="edit", device=first)
    second.capacityInKB = 12 << 10  # ... and by KB, capacityInBytes left as it was
    grow2 = vim.vm.device.VirtualDeviceSpec(operation="edit", device=second)  # type: ignore[no-untyped-call]

    new = vim.vm.device.VirtualDisk(  # type: ignore[no-untyped-call]
        key=-1,
        controllerKey=first.controllerKey,
        unitNumber=5,
        capacityInKB=4096,
        capacityInBytes=4 << 20,
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(  # type: ignore[no-untyped-call]
            diskMode="persistent", thinProvisioned=True, fileName=""
        ),
    )
    add = vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=new)  # type: ignore[no-untyped-call]
    WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[grow, grow2, add])))  # type: ignore[no-untyped-call]

    info = lab.vm(path)
    assert len(info.disks) == 3
    sizes = {d.flat_path.name: d.flat_path.stat().st_size for d in info.disks}
    assert sizes["two-disks-flat.vmdk"] == 48 << 20
    assert sizes["two-disks_1-flat.vmdk"] == 12 << 20
    assert [d.capacityInBytes for d in disks(vm.config)[:2]] == [48 << 20, 12 << 20]
    added = [d for d in info.disks if d.capacity_bytes == 4 << 20]
    assert len(added) == 1 and added[0].flat_path.stat().st_size == 4 << 20
    assert len({d.flat_path for d in info.disks}) == 3
    # Every disk of a CBT VM has its own tracking uuid; the grown one keeps its own.
    ids = [d.backing.changeId for d in disks(vm.config)]
    assert all(CHANGE_ID.match(i) for i in ids), ids
    assert len({i.split("/")[0] for i in ids}) == 3
    # The descriptor and the VM's file layout describe the new size.
    sizes_ex = {f.name: f.size for f in vm.layoutEx.file}
    assert sizes_ex["[LocalDS_0] two-disks/two-disks-flat.vmdk"] == 48 << 20
    descriptor = info.disks[0].flat_path.with_name("two-disks.vmdk").read_text()
    assert f"RW {(48 << 20) // 512} VMFS" in descriptor


def test_write_checks_its_arguments(lab: VcsimLab) -> None:
    with pytest.raises(UsageError):
        lab.write("/DC0/vm/small", (16 << 20) - 10, length=100)
    with pytest.raises(UsageError):
        lab.write("/DC0/vm/small", 0)
    with pytest.raises(NotFoundError):
        lab.write("/DC0/vm/nope", 0, length=1)
    with pytest.raises(NotFoundError):
        lab.vm("/DC0/vm/small").disk(4242)


def test_snapshot_freezes_the_flat_file_until_it_is_removed(si: Any, lab: VcsimLab) -> None:
    """Like ESXi's delta disks: while a snapshot exists the guest's writes do not reach
    the flat file that a backup reads; removing the last snapshot consolidates them."""
    path, bs = "/DC0/vm/small", 64 * 1024
    vm = find_vm(si, path)
    enable_cbt(vm)
    before = lab.write(path, 0, length=3 * bs, seed=1)
    snap = snapshot(vm, "backup")
    flat = lab.vm(path).disk().flat_path
    during = lab.write(path, bs + 100, length=1000, seed=2)  # inside block 1
    assert flat.read_bytes()[: 3 * bs] == before  # frozen
    assert lab.vm(path).disk().redo_blocks == 1
    s2 = snapshot(vm, "nested")
    key = disks(s2.config)[0].key
    cid = disks(snap.config)[0].backing.changeId
    assert vm.QueryChangedDiskAreas(s2, key, 0, cid).changedArea[0].start == bs
    remove_snapshot(snap)
    assert flat.read_bytes()[: 3 * bs] == before  # a snapshot is left
    remove_snapshot(s2)
    expected = before[: bs + 100] + during + before[bs + 1100 :]
    assert flat.read_bytes()[: 3 * bs] == expected
    assert lab.vm(path).disk().redo_blocks == 0
