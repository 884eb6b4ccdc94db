"""Snapshot removal in the vSphere lab never deletes a disk file that is still in use.

Stock vcsim deletes a removed snapshot's ``.vmsn`` by its ``layoutEx.file`` key, but
its ``RefreshStorageInfo`` (run after every snapshot removal) renumbers those keys while
the remaining snapshots keep their old ``dataKey``: a later removal then deleted
whatever file had that key now, e.g. the second disk's flat file.
"""

from __future__ import annotations

import http.cookies
from pathlib import Path
from typing import Any

import httpx
from pyVim.task import WaitForTask
from pyVmomi import vim

from hypersdk.lab import VcsimLab
from tests.lab.helpers import (
    blocks_to_areas,
    changed_areas,
    disks,
    enable_cbt,
    find_vm,
    remove_snapshot,
    snapshot,
)

PATH, BS = "/DC0/vm/two-disks", 64 * 1024
SIZES = (40 << 20, 12 << 20)


def session_cookie(si: Any) -> dict[str, str]:
    jar = http.cookies.SimpleCookie()
    jar.load(si._stub.cookie)
    return {name: morsel.value for name, morsel in jar.items()}


def grow_disks(vm: Any) -> None:
    changes = []
    for disk, size in zip(disks(vm.config), SIZES, strict=True):
        disk.capacityInBytes, disk.capacityInKB = size, size // 1024
        changes.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk))  # type: ignore[no-untyped-call]
    WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=changes)))  # type: ignore[no-untyped-call]


def disk_files(lab: VcsimLab) -> list[Path]:
    """Flat file and descriptor of every disk of the VM."""
    out = []
    for d in lab.vm(PATH).disks:
        out += [d.flat_path, d.flat_path.with_name(d.flat_path.name.replace("-flat", ""))]
    return out


def test_removing_a_snapshot_that_is_not_the_last_keeps_the_disk_files(
    si: Any, lab: VcsimLab
) -> None:
    vm = find_vm(si, PATH)
    enable_cbt(vm)
    grow_disks(vm)
    first, second = (d.key for d in disks(vm.config))
    s1 = snapshot(vm, "s1")
    s2 = snapshot(vm, "s2")
    remove_snapshot(snapshot(vm, "s3"))  # the last one: renumbers layoutEx.file
    cid = disks(s2.config)[1].backing.changeId
    files = disk_files(lab)
    assert len(files) == 4 and all(f.is_file() for f in files)

    remove_snapshot(s1)  # not the last one

    missing = [f.name for f in files if not f.is_file()]
    assert not missing, f"snapshot removal deleted {missing}"
    vm_dir = files[0].parent
    assert not (vm_dir / "two-disks-Snapshot1.vmsn").exists()  # its own file is gone
    assert (vm_dir / "two-disks-Snapshot2.vmsn").is_file()
    # layoutEx names real files, and s2's dataKey is its own .vmsn.
    by_key = {f.key: f.name for f in vm.layoutEx.file}
    assert len(by_key) == len(vm.layoutEx.file)
    assert all(n.startswith("[LocalDS_0] two-disks/") for n in by_key.values()), by_key
    (layout,) = vm.layoutEx.snapshot
    assert by_key[layout.dataKey] == "[LocalDS_0] two-disks/two-disks-Snapshot2.vmsn"

    # The second disk still takes writes and tracks them; both flat files read back.
    data = lab.write(PATH, 3 * BS + 10, length=1000, disk_key=second, seed=7)
    areas, _ = changed_areas(vm, None, second, cid, SIZES[1])
    assert areas == blocks_to_areas({3}, BS, SIZES[1])
    assert vm.QueryChangedDiskAreas(s2, first, 0, "*").length == SIZES[0]
    with httpx.Client(verify=False, cookies=session_cookie(si)) as client:
        for d, size in zip(lab.vm(PATH).disks, SIZES, strict=True):
            part = client.get(lab.folder_url(d), headers={"Range": f"bytes={size - 4096}-"})
            assert part.status_code == 206 and len(part.content) == 4096
    remove_snapshot(s2)
    assert all(f.is_file() for f in files)
    flat = lab.vm(PATH).disk(second).flat_path
    assert flat.read_bytes()[3 * BS + 10 : 3 * BS + 1010] == data
    assert not list(vm_dir.glob("*.vmsn"))


def test_remove_all_snapshots_keeps_the_disk_files(si: Any, lab: VcsimLab) -> None:
    vm = find_vm(si, PATH)
    enable_cbt(vm)
    grow_disks(vm)
    for name in ("a", "b", "c"):
        snapshot(vm, name)
    lab.write(PATH, 0, length=1000, disk_key=disks(vm.config)[1].key, seed=3)
    files = disk_files(lab)
    WaitForTask(vm.RemoveAllSnapshots_Task())  # type: ignore[no-untyped-call]
    missing = [f.name for f in files if not f.is_file()]
    assert not missing, f"snapshot removal deleted {missing}"
    assert not list(files[0].parent.glob("*.vmsn"))
    assert all(n.startswith("[LocalDS_0] two-disks/") for n in (f.name for f in vm.layoutEx.file))
    for d in lab.vm(PATH).disks:
        lab.write(PATH, 0, length=10, disk_key=d.key, seed=4)
