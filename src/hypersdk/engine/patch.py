"""Sub-block incremental reads: read only a block's changed bytes, patch the parent's.

A block an incremental must store is read whole from the hypervisor even when a few KiB
of it changed. When the changed extents cover a small part of a block (their ranges,
merged where closer than a request's cost, plus that cost for each range, come to at
most ``patch_threshold`` of the block), the block is instead built from
the parent generation's copy of it (its chunk from the repository, checked by the codec
against the parent index's chunk id, or zeros for a zero block), the changed data ranges
read from the disk and the changed zero ranges zeroed. The result then takes the normal
path (zero check, hash, store): the new chunk is the block's current bytes, exactly what
a whole read would have given, provided the changed extents are right, which every
incremental already relies on for the blocks it does not read at all.

Whether it pays depends on the reader. ``patch_threshold`` is a reader's class attribute
(0 or absent: never patch), ``request_bytes`` what one more request costs it, in bytes
of reading. The vSphere reader sets both (0.5, 128 KiB): its reads cost the datastore's
disk and the network, while a patch costs the backup host one chunk read, decompression
and hash check (about 1 ms of CPU a MiB). A local NBD read (QEMU) costs the backup host
about 0.3 ms of CPU a MiB, less than the patch, so those readers leave it unset.

A parent chunk that is missing or fails its check is never used: the block is read whole
instead (a warning names the chunk; ``verify`` reports the parent's damage). The parent
index's entries are read for the patched blocks only, a window at a time
(``IndexSource.read_entries``); memory follows the number of changed extents, not the
disk size.
"""

from __future__ import annotations

import bisect
import logging
import threading
from dataclasses import dataclass, field

from hypersdk.engine.plan import BlockPlan
from hypersdk.errors import IntegrityError, RepositoryError
from hypersdk.providers.base import FrozenDisk
from hypersdk.repository.index import IndexSource
from hypersdk.repository.repository import Repository

log = logging.getLogger(__name__)

# What one read request costs, in bytes read, for a reader that does not say
# (``request_bytes``): ranges of a block closer than this are read as one, and each
# range counts this much on top of its length against the threshold.
MERGE_GAP = 16 << 10


@dataclass
class _Patch:
    data: list[tuple[int, int]] = field(default_factory=list)  # (offset in block, length)
    zero: list[tuple[int, int]] = field(default_factory=list)


def _merge(ranges: list[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    """Sorted (start, end) ranges merged where they overlap or lie within ``gap``."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + gap:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


class Patcher:
    """Reads one disk's planned blocks for ``writer``: ``read(block, length)`` is the
    block's bytes, from a whole read or a patch. Thread-safe."""

    def __init__(
        self,
        repo: Repository,
        disk: FrozenDisk,
        plan: BlockPlan,
        base: IndexSource | None,
        *,
        threshold: float | None = None,
    ) -> None:
        self.repo = repo
        self.disk = disk
        self.block_size = plan.block_size
        self.plan = plan
        self.blocks_patched = 0
        self.bytes_not_read = 0  # bytes of patched blocks not read from the disk
        self._lock = threading.Lock()
        if threshold is None:
            threshold = float(getattr(disk.reader, "patch_threshold", 0.0) or 0.0)
        self.gap = int(getattr(disk.reader, "request_bytes", MERGE_GAP))
        self._patches: dict[int, _Patch] = {}
        self._parent: dict[int, bytes | None] = {}
        if base is None or disk.changed is None or threshold <= 0:
            return
        self._patches = self._small_changes(threshold)
        if not self._patches:
            return
        blocks = sorted(self._patches)
        self._parent = base.read_entries(blocks)
        hint = getattr(disk.reader, "partial_blocks", None)
        if hint is not None:
            hint(self.block_size, blocks)  # keep their whole bytes out of prefetching

    def _small_changes(self, threshold: float) -> dict[int, _Patch]:
        """The blocks whose changed data (ranges merged), with the cost of a request for
        each range, is at most ``threshold`` of the block. Only an extent's first and
        last blocks can be touched in part, so the cost follows the number of extents."""
        assert self.disk.changed is not None
        bs = self.block_size
        touched: dict[int, _Patch] = {}
        covered: list[tuple[int, int]] = []  # block runs a data extent covers whole
        zeroed: list[tuple[int, int]] = []  # block runs a zero extent covers whole
        for ext in self.disk.changed:
            if ext.length <= 0:
                continue
            first, last = ext.offset // bs, (ext.end - 1) // bs
            for b in {first, last}:
                start, end = max(ext.offset, b * bs), min(ext.end, (b + 1) * bs)
                p = touched.setdefault(b, _Patch())
                (p.zero if ext.zero else p.data).append((start - b * bs, end - b * bs))
            if last - first > 1:
                (zeroed if ext.zero else covered).append((first + 1, last))
        covered = _merge(covered, 0)
        zeroed = _merge(zeroed, 0)
        out: dict[int, _Patch] = {}
        for b, p in touched.items():
            if _inside(covered, b):
                continue
            length = self.plan.length(b)
            if _inside(zeroed, b):
                p.zero.append((0, length))
            p.data = _merge(p.data, self.gap)
            if p.data and p.data[0][0] == 0 and p.data[0][1] >= length:
                continue
            p.zero = _merge(p.zero, 0)
            if not p.data and p.zero and p.zero[0][0] == 0 and p.zero[0][1] >= length:
                continue  # zero as a whole: the plan records it without a read
            if sum(e - s + self.gap for s, e in p.data) <= threshold * length:
                out[b] = p
        return out

    def patches(self, block: int) -> bool:
        """Whether ``read`` builds this block from its parent's bytes."""
        return block in self._patches

    def read(self, block: int, length: int) -> bytes:
        """The block's current bytes (``length``: the plan's length of it)."""
        offset = block * self.block_size
        p = self._patches.get(block)
        if p is None:
            return self.disk.reader.pread(offset, length)
        base = self._parent_block(block, length)
        if base is None:
            return self.disk.reader.pread(offset, length)
        for s, e in p.zero:
            base[s:e] = bytes(e - s)
        read = 0
        for s, e in p.data:
            got = self.disk.reader.pread(offset + s, e - s)
            if len(got) != e - s:
                raise RepositoryError(
                    f"disk {self.disk.key}: short read at offset {offset + s} "
                    f"({len(got)} of {e - s} bytes)"
                )
            base[s:e] = got
            read += e - s
        with self._lock:
            self.blocks_patched += 1
            self.bytes_not_read += length - read
        return bytes(base)

    def _parent_block(self, block: int, length: int) -> bytearray | None:
        """The parent's bytes of ``block``, checked; None when they cannot be had (the
        block is then read whole)."""
        cid = self._parent.get(block)
        if cid is None:
            return bytearray(length)  # a zero block in the parent
        where = f"disk {self.disk.key}: parent chunk {cid.hex()} of block {block}"
        try:
            plain = self.repo.codec.open(self.repo.chunks.get(cid), cid, where)
            if len(plain) != length:
                raise IntegrityError(f"{where}: {len(plain)} bytes, the block has {length}")
        except FileNotFoundError:
            log.warning("%s is missing; reading the block whole", where)
            return None
        except IntegrityError as err:
            log.warning("%s; reading the block whole", err)
            return None
        return bytearray(plain)


def _inside(runs: list[tuple[int, int]], block: int) -> bool:
    """Whether ``block`` lies in one of the sorted, disjoint ``[first, end)`` runs."""
    i = bisect.bisect_right(runs, (block, float("inf"))) - 1
    return i >= 0 and block < runs[i][1]
