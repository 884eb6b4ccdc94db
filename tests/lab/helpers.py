"""pyVmomi helpers shared by the lab tests."""

from __future__ import annotations

import re
from typing import Any

from pyVim.task import WaitForTask
from pyVmomi import vim

CHANGE_ID = re.compile(r"^52( [0-9a-f]{2}){7}-[0-9a-f]{2}( [0-9a-f]{2}){7}/\d+$")


def find_vm(si: Any, path: str) -> Any:
    vm = si.RetrieveContent().searchIndex.FindByInventoryPath(path)
    assert vm is not None, path
    return vm


def disks(config: Any) -> list[Any]:
    return [d for d in config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]


def enable_cbt(vm: Any, enabled: bool = True) -> None:
    WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=enabled)))  # type: ignore[no-untyped-call]


def snapshot(vm: Any, name: str) -> Any:
    task = vm.CreateSnapshot_Task(name=name, description="", memory=False, quiesce=False)
    WaitForTask(task)  # type: ignore[no-untyped-call]
    return task.info.result


def remove_snapshot(snap: Any) -> Any:
    task = snap.RemoveSnapshot_Task(removeChildren=False)
    WaitForTask(task)  # type: ignore[no-untyped-call]
    return task


def changed_areas(
    vm: Any, snap: Any, key: int, change_id: str, capacity: int
) -> tuple[list[tuple[int, int]], int]:
    """All changed areas as (start, length), following startOffset + length; and the
    number of calls it took."""
    areas: list[tuple[int, int]] = []
    start, calls = 0, 0
    while start < capacity:
        info = vm.QueryChangedDiskAreas(snap, key, start, change_id)
        calls += 1
        assert info.startOffset == start
        end = info.startOffset + info.length
        assert end > start, "QueryChangedDiskAreas did not advance"
        for a in info.changedArea or []:
            assert start <= a.start and a.start + a.length <= end
            areas.append((a.start, a.length))
        start = end
    return merge(areas), calls


def merge(areas: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, n in sorted(areas):
        if out and out[-1][0] + out[-1][1] >= s:
            ps, pn = out[-1]
            out[-1] = (ps, max(ps + pn, s + n) - ps)
        else:
            out.append((s, n))
    return out


def blocks_to_areas(blocks: set[int], bs: int, capacity: int) -> list[tuple[int, int]]:
    return merge([(b * bs, min(bs, capacity - b * bs)) for b in blocks])
