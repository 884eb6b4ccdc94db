"""Turn a disk's changed extents into per-block actions.

Blocks are fixed-size and aligned to disk offsets. A block any data extent touches is
read; a block wholly covered by zero extents is recorded as zero without a read; a block
only partly covered by a zero extent is read too (its other bytes may hold data); a block
nothing touches keeps its base content (the parent's, or zero for a full export).

The plan is held as sorted runs of blocks, built from the extents alone: its size and
cost follow the number of changed extents, never the disk size (a 62 TiB disk has 65
million 1 MiB blocks; a per-block structure or loop would cost seconds and gigabytes).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from hypersdk.errors import ProviderError
from hypersdk.providers.base import Extent

KEEP = 0
ZERO = 1
READ = 2

Runs = list[tuple[int, int]]  # sorted, disjoint, non-adjacent [first, end) block ranges


@dataclass(frozen=True)
class BlockPlan:
    block_size: int
    capacity: int
    read: Runs  # blocks to read
    zero: Runs  # blocks recorded as zero without a read; never overlaps ``read``

    @property
    def nblocks(self) -> int:
        return -(-self.capacity // self.block_size)

    def blocks(self, action: int) -> Iterator[int]:
        """The blocks to read (READ) or to record as zero (ZERO), in disk order."""
        if action == KEEP:
            raise ValueError("KEEP blocks are not listed: they are everything else")
        for first, end in self.read if action == READ else self.zero:
            yield from range(first, end)

    def count(self, action: int) -> int:
        read = sum(e - f for f, e in self.read)
        zero = sum(e - f for f, e in self.zero)
        return {READ: read, ZERO: zero, KEEP: self.nblocks - read - zero}[action]

    def length(self, block: int) -> int:
        return min(self.block_size, self.capacity - block * self.block_size)

    def read_bytes(self) -> int:
        total = self.count(READ) * self.block_size
        if self.read and self.read[-1][1] == self.nblocks:
            total -= self.nblocks * self.block_size - self.capacity  # the short last block
        return total

    @property
    def actions(self) -> bytearray:
        """One action per block: for tests and small disks only (it is as long as the
        disk has blocks)."""
        out = bytearray(self.nblocks)
        for runs, action in ((self.zero, ZERO), (self.read, READ)):
            for first, end in runs:
                out[first:end] = bytes([action]) * (end - first)
        return out


def _merge(runs: Iterable[tuple[int, int]]) -> Runs:
    out: Runs = []
    for first, end in sorted(runs):
        if first >= end:
            continue
        if out and first <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((first, end))
    return out


def _subtract(runs: Runs, minus: Runs) -> Runs:
    """``runs`` without the blocks of ``minus`` (both sorted and merged)."""
    out: Runs = []
    j = 0
    for first, end in runs:
        while j < len(minus) and minus[j][1] <= first:
            j += 1
        k = j
        while first < end and k < len(minus) and minus[k][0] < end:
            if minus[k][0] > first:
                out.append((first, minus[k][0]))
            first = max(first, minus[k][1])
            k += 1
        if first < end:
            out.append((first, end))
    return out


def plan_blocks(capacity: int, block_size: int, changed: list[Extent] | None) -> BlockPlan:
    nblocks = -(-capacity // block_size)
    if changed is None:
        return BlockPlan(block_size, capacity, [(0, nblocks)] if nblocks else [], [])
    read: list[tuple[int, int]] = []
    zero: list[tuple[int, int]] = []
    for ext in changed:
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
            read.append((first, last + 1))
            continue
        # A block the zero extent covers only in part must be read: its other bytes
        # may hold data.
        inner_first = first if ext.offset <= first * block_size else first + 1
        last_end = min((last + 1) * block_size, capacity)
        inner_last = last if ext.end >= last_end else last - 1
        if inner_first > first:
            read.append((first, first + 1))
        if inner_last < last:
            read.append((last, last + 1))
        zero.append((inner_first, inner_last + 1))
    merged_read = _merge(read)
    # Data wins over zero in the same block.
    return BlockPlan(block_size, capacity, merged_read, _subtract(_merge(zero), merged_read))
