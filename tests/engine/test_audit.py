"""engine/audit.py at block level: which differences count as CBT misses."""

from __future__ import annotations

from hypersdk.engine.audit import audit_disk, suspect_generations
from hypersdk.engine.plan import BlockPlan, plan_blocks
from hypersdk.providers.base import Extent
from hypersdk.repository.index import ENTRY, DiskIndex

BS = 64 * 1024
CAP = 10 * BS - 4096  # a short last block


def entry(n: int) -> bytes:
    return bytes([n]) * ENTRY


def full_read(blocks: dict[int, int]) -> tuple[BlockPlan, bytearray]:
    """A full read of every block: ``blocks`` maps block -> content tag (0: zero)."""
    plan = plan_blocks(CAP, BS, None)
    entries = bytearray(plan.nblocks * ENTRY)
    for b, tag in blocks.items():
        if tag:
            entries[b * ENTRY : (b + 1) * ENTRY] = entry(tag)
    return plan, entries


def parent_of(blocks: dict[int, int]) -> DiskIndex:
    index = DiskIndex.empty(CAP, BS)
    for b, tag in blocks.items():
        index.set(b, entry(tag) if tag else None)
    return index


def test_differences_outside_the_reported_extents_are_missed() -> None:
    parent = parent_of({0: 1, 1: 2, 4: 3, 9: 4})
    # now: block 1 changed (reported), block 4 changed (not reported), block 9 (the short
    # last one) changed and not reported, block 6 written (reported only in part)
    plan, entries = full_read({0: 1, 1: 5, 4: 6, 6: 7, 9: 8})
    reported = [Extent(BS + 100, 10), Extent(6 * BS + BS - 1, 1)]
    found = audit_disk("d", plan, entries, parent, reported)
    assert found.blocks_checked == 10 and found.blocks_missed == 2
    assert found.missed == [(4 * BS, BS), (9 * BS, CAP - 9 * BS)]


def test_a_zero_extent_over_data_is_a_miss_even_when_nothing_changed() -> None:
    parent = parent_of({2: 1, 3: 1})
    plan, entries = full_read({2: 1, 3: 1})
    # CBT claims blocks 2-3 were zeroed: an incremental would record zeros over data.
    found = audit_disk("d", plan, entries, parent, [Extent(2 * BS, 2 * BS, zero=True)])
    assert found.missed == [(2 * BS, 2 * BS)]
    # A truthful zero extent over blocks that are zero now is no miss.
    plan, entries = full_read({})
    found = audit_disk("d", plan, entries, parent, [Extent(2 * BS, 2 * BS, zero=True)])
    assert found.blocks_missed == 0


def test_no_difference_no_miss_and_suspects_come_from_missing_audits() -> None:
    parent = parent_of({0: 1})
    plan, entries = full_read({0: 1})
    assert audit_disk("d", plan, entries, parent, []).blocks_missed == 0
    audits = [
        None,
        {"performed": True, "previous": "g1", "blocks_missed": 0},
        {"performed": True, "previous": "g2", "blocks_missed": 3},
        {"performed": False, "previous": None, "blocks_missed": 0},
    ]
    assert suspect_generations(audits) == {"g2"}
