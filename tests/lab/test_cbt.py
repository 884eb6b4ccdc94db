"""Changed block tracking of the vSphere lab, seen through pyVmomi like the product sees it."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from hypersdk.lab import VcsimLab
from tests.lab.helpers import (
    CHANGE_ID,
    blocks_to_areas,
    changed_areas,
    disks,
    enable_cbt,
    find_vm,
    remove_snapshot,
    snapshot,
)

BS = 64 * 1024


def test_vm_found_by_inventory_path_supports_cbt(si: Any, lab: VcsimLab) -> None:
    vm = find_vm(si, "/DC0/vm/big")
    assert vm.name == "big"
    assert vm.capability.changeTrackingSupported is True
    assert not vm.config.changeTrackingEnabled
    (disk,) = disks(vm.config)
    assert disk.capacityInBytes == 1 << 30
    assert not disk.backing.changeId  # no CBT, no change id
    assert lab.vm("/DC0/vm/big").disk().flat_path.stat().st_size == 1 << 30


def test_change_ids_appear_after_stun_and_stay_frozen_per_snapshot(si: Any, lab: VcsimLab) -> None:
    vm = find_vm(si, "/DC0/vm/small")
    enable_cbt(vm)
    assert vm.config.changeTrackingEnabled is True
    # Like ESXi: CBT enabled on a running VM becomes active at the next stun/unstun.
    assert not disks(vm.config)[0].backing.changeId

    s1 = snapshot(vm, "s1")
    id1 = disks(s1.config)[0].backing.changeId
    assert CHANGE_ID.match(id1), id1
    assert id1.endswith("/1")
    assert disks(vm.config)[0].backing.changeId == id1

    lab.write("/DC0/vm/small", 0, length=BS)
    s2 = snapshot(vm, "s2")
    id2 = disks(s2.config)[0].backing.changeId
    assert id2.split("/")[0] == id1.split("/")[0] and id2.endswith("/2")
    assert disks(s1.config)[0].backing.changeId == id1  # frozen
    assert disks(vm.config)[0].backing.changeId == id2

    # The task entity of RemoveSnapshot_Task is the VM (stock vcsim says the snapshot).
    task = remove_snapshot(s2)
    assert task.info.entity == vm and task.info.entityName == "small"
    remove_snapshot(s1)
    assert vm.snapshot is None
    assert disks(vm.config)[0].backing.changeId == id2  # valid after the snapshots are gone


def test_star_returns_exactly_the_written_areas(si: Any, lab: VcsimLab) -> None:
    vm = find_vm(si, "/DC0/vm/big")
    enable_cbt(vm)
    writes = [(0, BS), (5 * BS, 3 * BS), (100 << 20, 2 * BS), ((1 << 30) - BS, BS)]
    for off, n in writes:
        lab.write("/DC0/vm/big", off, length=n, seed=off)
    snap = snapshot(vm, "full")
    key = disks(snap.config)[0].key
    areas, _ = changed_areas(vm, snap, key, "*", 1 << 30)
    assert areas == writes
    remove_snapshot(snap)


def test_between_snapshots_exactly_the_changed_blocks(si: Any, lab: VcsimLab) -> None:
    """5 % of the blocks of a 1 GiB disk change (one of them to zeros): exactly those."""
    path, capacity = "/DC0/vm/big", 1 << 30
    vm = find_vm(si, path)
    enable_cbt(vm)
    rng = random.Random(7)
    nblocks = capacity // BS
    base = set(rng.sample(range(nblocks), nblocks // 50))
    for b in base:
        lab.write(path, b * BS, length=BS, seed=b)
    s1 = snapshot(vm, "backup-1")
    id1 = disks(s1.config)[0].backing.changeId
    remove_snapshot(s1)

    changed = set(rng.sample(range(nblocks), nblocks * 5 // 100))
    zeroed = next(iter(base - changed))
    for b in changed:
        # Partial writes inside a block: the lab reports whole blocks.
        lab.write(path, b * BS + 512, length=4096, seed=b + 1)
    lab.write(path, zeroed * BS, length=BS, zero=True)
    s2 = snapshot(vm, "backup-2")
    key = disks(s2.config)[0].key
    areas, _ = changed_areas(vm, s2, key, id1, capacity)
    assert areas == blocks_to_areas(changed | {zeroed}, BS, capacity)
    # And "*" is what is allocated now: the zeroed block is no longer in it.
    star, _ = changed_areas(vm, s2, key, "*", capacity)
    assert star == blocks_to_areas((base | changed) - {zeroed}, BS, capacity)
    remove_snapshot(s2)


def test_paging_one_area_per_reply(si: Any, lab: VcsimLab) -> None:
    path, capacity = "/DC0/vm/small", 16 << 20
    vm = find_vm(si, path)
    enable_cbt(vm)
    for b in (1, 2, 10, 40, 200):
        lab.write(path, b * BS, length=BS)
    snap = snapshot(vm, "s")
    key = disks(snap.config)[0].key
    unpaged, calls = changed_areas(vm, snap, key, "*", capacity)
    assert calls == 1 and len(unpaged) == 4

    assert lab.config(max_changed_areas=1)["max_changed_areas"] == 1
    first = vm.QueryChangedDiskAreas(snap, key, 0, "*")
    assert len(first.changedArea) == 1
    assert first.length == 3 * BS  # the reply covers only up to its last area
    paged, calls = changed_areas(vm, snap, key, "*", capacity)
    assert paged == unpaged and calls == len(unpaged)  # the last reply runs to the end
    # A startOffset inside an area clips that area.
    mid = vm.QueryChangedDiskAreas(snap, key, BS + 100, "*")
    assert (mid.changedArea[0].start, mid.changedArea[0].length) == (BS + 100, 2 * BS - 100)
    remove_snapshot(snap)


def test_cbt_reset_invalidates_old_change_ids(si: Any, lab: VcsimLab) -> None:
    path = "/DC0/vm/small"
    vm = find_vm(si, path)
    enable_cbt(vm)
    s1 = snapshot(vm, "s1")
    old = disks(s1.config)[0].backing.changeId
    remove_snapshot(s1)

    (reset,) = lab.reset_cbt(path)
    assert reset.change_id.split("/")[0] != old.split("/")[0]
    s2 = snapshot(vm, "s2")
    key = disks(s2.config)[0].key
    new = disks(s2.config)[0].backing.changeId
    assert new.split("/")[0] == reset.change_id.split("/")[0]
    with pytest.raises(vim.fault.FileFault):
        vm.QueryChangedDiskAreas(s2, key, 0, old)
    assert vm.QueryChangedDiskAreas(s2, key, 0, "*").length == 16 << 20
    remove_snapshot(s2)


def test_bad_requests_fault_like_esxi(si: Any, lab: VcsimLab) -> None:
    vm = find_vm(si, "/DC0/vm/small")
    s0 = snapshot(vm, "no-cbt")
    key = disks(s0.config)[0].key
    with pytest.raises(vim.fault.FileFault):  # CBT not enabled
        vm.QueryChangedDiskAreas(s0, key, 0, "*")
    remove_snapshot(s0)

    enable_cbt(vm)
    snap = snapshot(vm, "s")
    cid = disks(snap.config)[0].backing.changeId
    uuid = cid.split("/")[0]
    with pytest.raises(vmodl.fault.InvalidArgument):
        vm.QueryChangedDiskAreas(snap, key, 0, "not-a-change-id")
    with pytest.raises(vim.fault.FileFault):
        vm.QueryChangedDiskAreas(snap, key, 0, f"{uuid}/99")
    with pytest.raises(vmodl.fault.InvalidArgument):
        vm.QueryChangedDiskAreas(snap, key + 1, 0, "*")
    with pytest.raises(vmodl.fault.InvalidArgument):
        vm.QueryChangedDiskAreas(snap, key, 16 << 20, "*")
    remove_snapshot(snap)

    enable_cbt(vm, False)
    assert not disks(vm.config)[0].backing.changeId
    enable_cbt(vm)  # re-enabled: a new tracking uuid once active
    s3 = snapshot(vm, "s3")
    assert disks(s3.config)[0].backing.changeId.split("/")[0] != uuid
    with pytest.raises(vim.fault.FileFault):
        vm.QueryChangedDiskAreas(s3, key, 0, cid)
    remove_snapshot(s3)
