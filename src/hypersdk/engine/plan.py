"""Turn a disk's changed extents into per-block actions.

Blocks are fixed-size and aligned to disk offsets. A block any data extent touches is
read; a block wholly covered by zero extents is recorded as zero without a read; a block
only partly covered by a zero extent is read too (its other bytes may hold data); a block
nothing touches keeps its base content (the parent's, or zero for a full export).
"""

from __future__ import annotations

from dataclasses import dataclass

from hypersdk.errors import ProviderError
from hypersdk.providers.base import Extent

KEEP = 0
ZERO = 1
READ = 2


@dataclass
class BlockPlan:
    block_size: int
    capacity: int
    actions: bytearray  # one of KEEP, ZERO, READ per block

    def blocks(self, action: int) -> list[int]:
        return [i for i, a in enumerate(self.actions) if a == action]

    def count(self, action: int) -> int:
        return self.actions.count(action)

    def length(self, block: int) -> int:
        return min(self.block_size, self.capacity - block * self.block_size)

    def read_bytes(self) -> int:
        return sum(self.length(b) for b in self.blocks(READ))


def plan_blocks(capacity: int, block_size: int, changed: list[Extent] | None) -> BlockPlan:
    nblocks = -(-capacity // block_size)
    if changed is None:
        return BlockPlan(block_size, capacity, bytearray([READ]) * nblocks)
    actions = bytearray(nblocks)
    # Zero extents first, so that any data extent in the same block wins.
    for ext in sorted(changed, key=lambda e: not e.zero):
        if ext.length == 0:
            continue
        if ext.offset < 0 or ext.length < 0 or ext.end > capacity:
            raise ProviderError(
                f"changed extent {ext.offset}+{ext.length} lies outside the disk "
                f"(capacity {capacity})"
            )
        first = ext.offset // block_size
        last = (ext.end - 1) // block_size
        if not ext.zero:
            actions[first : last + 1] = bytes([READ]) * (last - first + 1)
            continue
        for block in (first, last):
            start = block * block_size
            end = min(start + block_size, capacity)
            if ext.offset > start or ext.end < end:
                actions[block] = READ  # partly zero: read it
        inner_first = first if ext.offset <= first * block_size else first + 1
        last_end = min((last + 1) * block_size, capacity)
        inner_last = last if ext.end >= last_end else last - 1
        for block in range(inner_first, inner_last + 1):
            if actions[block] != READ:
                actions[block] = ZERO
    return BlockPlan(block_size, capacity, actions)
