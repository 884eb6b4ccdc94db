"""The CBT audit: which blocks would an incremental have got wrong?

An audit export reads every block, as a forced full export does, and also asks the
platform what changed since the previous generation. Compared with that generation's
index, a block is *missed* when an incremental built on the platform's answer would hold
the wrong content:

- no extent reported it, yet its content differs (the incremental keeps the parent's
  chunk);
- a zero extent covered it wholly, yet it holds data (the incremental records zero).

A block any data extent touches would be read whole, so it is never a miss, whatever
part of it changed. The audit works on index entries (32 bytes a block), never on data,
and scans unchanged windows with one comparison each.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hypersdk.engine.plan import ZERO, BlockPlan, Runs, plan_blocks
from hypersdk.providers.base import Extent
from hypersdk.repository.index import ENTRY, ZERO_ENTRY, DiskIndex, Entries, zeroed_entries

_WINDOW = 4096  # entries compared at once: 128 KiB


@dataclass
class DiskAudit:
    key: str
    blocks_checked: int
    blocks_missed: int
    missed: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "blocks_checked": self.blocks_checked,
            "blocks_missed": self.blocks_missed,
            "missed": [{"offset": o, "length": n} for o, n in self.missed],
        }


@dataclass
class AuditReport:
    """What ``--audit`` found; ``performed`` is False when there was nothing to audit
    against (``reason`` says why), e.g. the first export of a VM."""

    performed: bool
    previous: str | None  # the generation audited: suspect when blocks were missed
    reason: str = ""
    disks: list[DiskAudit] = field(default_factory=list)

    @property
    def blocks_checked(self) -> int:
        return sum(d.blocks_checked for d in self.disks)

    @property
    def blocks_missed(self) -> int:
        return sum(d.blocks_missed for d in self.disks)

    @property
    def clean(self) -> bool:
        return self.performed and self.blocks_missed == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "performed": self.performed,
            "previous": self.previous,
            "clean": self.clean,
            "reason": self.reason,
            "blocks_checked": self.blocks_checked,
            "blocks_missed": self.blocks_missed,
            "disks": [d.to_json() for d in self.disks],
        }

    def summary(self) -> str:
        """One line for a terminal."""
        if not self.performed:
            return f"CBT audit not possible: {self.reason}"
        if self.clean:
            return (
                f"CBT audit of generation {self.previous}: clean, "
                f"{self.blocks_checked} blocks checked, none missed"
            )
        ranges = "; ".join(
            f"{d.key} "
            + ", ".join(f"{o}+{n}" for o, n in d.missed[:8])
            + (" ..." if len(d.missed) > 8 else "")
            for d in self.disks
            if d.missed
        )
        return (
            f"CBT missed {self.blocks_missed} of {self.blocks_checked} blocks since "
            f"generation {self.previous}: that generation is suspect ({ranges})"
        )


def not_performed(reason: str) -> AuditReport:
    return AuditReport(performed=False, previous=None, reason=reason)


def suspect_generations(audits: list[dict[str, Any] | None]) -> set[str]:
    """The generations that a recorded audit (a manifest's ``audit``) found wanting."""
    out: set[str] = set()
    for a in audits:
        if a and a.get("performed") and a.get("blocks_missed") and a.get("previous"):
            out.add(str(a["previous"]))
    return out


def _member(runs: Runs, starts: list[int], block: int) -> bool:
    i = bisect_right(starts, block) - 1
    return i >= 0 and block < runs[i][1]


def _full_entries(plan: BlockPlan, entries: bytearray) -> Entries:
    """The new generation's index entries for every block (zero where nothing was read);
    on a sparse disk they cost the memory of its data blocks only."""
    out = zeroed_entries(plan.nblocks * ENTRY)
    pos = 0
    for first, end in plan.read:
        n = (end - first) * ENTRY
        out[first * ENTRY : end * ENTRY] = entries[pos : pos + n]
        pos += n
    return out


def _differing(new: Entries, old: Entries, nblocks: int) -> Iterator[int]:
    step = _WINDOW * ENTRY
    for w in range(0, nblocks * ENTRY, step):
        if new[w : w + step] == old[w : w + step]:
            continue
        for b in range(w // ENTRY, min(nblocks, (w + step) // ENTRY)):
            if new[b * ENTRY : (b + 1) * ENTRY] != old[b * ENTRY : (b + 1) * ENTRY]:
                yield b


def audit_disk(
    key: str,
    plan: BlockPlan,
    entries: bytearray,
    parent: DiskIndex,
    reported: list[Extent],
) -> DiskAudit:
    """Compare a full read (``plan`` and its ``entries``, as the writer made them) with
    the ``parent`` index and the platform's ``reported`` extents since the parent."""
    if parent.capacity != plan.capacity or parent.block_size != plan.block_size:
        raise ValueError(f"disk {key}: the audited generation has another geometry")
    told = plan_blocks(plan.capacity, plan.block_size, reported)
    read_starts = [f for f, _ in told.read]
    zero_starts = [f for f, _ in told.zero]
    new = _full_entries(plan, entries)
    missed: set[int] = set()
    for b in _differing(new, parent.entries, plan.nblocks):
        if _member(told.read, read_starts, b):
            continue  # an incremental reads it whole
        if _member(told.zero, zero_starts, b):
            continue  # checked below with every zero-reported block
        missed.add(b)
    for b in told.blocks(ZERO):
        if new[b * ENTRY : (b + 1) * ENTRY] != ZERO_ENTRY:
            missed.add(b)
    return DiskAudit(key, plan.nblocks, len(missed), _byte_ranges(sorted(missed), plan))


def _byte_ranges(blocks: list[int], plan: BlockPlan) -> list[tuple[int, int]]:
    runs: list[list[int]] = []
    for b in blocks:
        if runs and runs[-1][1] == b:
            runs[-1][1] = b + 1
        else:
            runs.append([b, b + 1])
    bs = plan.block_size
    return [(f * bs, min(e * bs, plan.capacity) - f * bs) for f, e in runs]
