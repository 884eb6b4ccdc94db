"""QueryChangedDiskAreas, paged until the disk is covered.

One reply may cover only part of the disk: the next call starts at
``result.startOffset + result.length``. A reply that does not advance, or areas outside
the range the reply claims, is a server error (ProviderError), never a silent stop.
A fault about the previous change id (``FileFault``, ``InvalidArgument``) means the
chain cannot continue: ChangeIdInvalid, and the engine exports full instead.
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim, vmodl

from hypersdk.errors import ChangeIdInvalid, ProviderError
from hypersdk.providers.base import Extent
from hypersdk.providers.vsphere._faults import fault_message

ALLOCATED = "*"


def merge(extents: list[Extent]) -> list[Extent]:
    out: list[Extent] = []
    for e in sorted(extents, key=lambda x: x.offset):
        if e.length <= 0:
            continue
        if out and out[-1].end >= e.offset:
            last = out[-1]
            out[-1] = Extent(last.offset, max(last.end, e.end) - last.offset)
        else:
            out.append(e)
    return out


def changed_areas(
    vm: Any, snapshot: Any, device_key: int, capacity: int, change_id: str, disk_key: str
) -> tuple[list[Extent], int]:
    """(merged changed extents, number of calls). ``change_id="*"``: allocated areas."""
    extents: list[Extent] = []
    start = 0
    calls = 0
    while start < capacity:
        try:
            info = vm.QueryChangedDiskAreas(snapshot, device_key, start, change_id)
        except (vim.fault.FileFault, vmodl.fault.InvalidArgument) as err:
            if change_id == ALLOCATED:
                raise ProviderError(
                    f"disk {disk_key}: vSphere cannot list the allocated areas "
                    f"({fault_message(err)})"
                ) from err
            raise ChangeIdInvalid(
                f"disk {disk_key}: vSphere rejected change id {change_id} ({fault_message(err)})"
            ) from err
        calls += 1
        reply_start = int(info.startOffset)
        end = reply_start + int(info.length)
        if reply_start > start or end <= start:
            raise ProviderError(
                f"disk {disk_key}: QueryChangedDiskAreas at offset {start} did not advance "
                f"(reply {reply_start}+{int(info.length)})"
            )
        for area in info.changedArea or []:
            a_start, a_len = int(area.start), int(area.length)
            if a_start < start or a_start + a_len > min(end, capacity) or a_len < 0:
                raise ProviderError(
                    f"disk {disk_key}: changed area {a_start}+{a_len} lies outside the "
                    f"reply's range {start}-{end} (capacity {capacity})"
                )
            extents.append(Extent(a_start, a_len))
        start = end
    return merge(extents), calls
