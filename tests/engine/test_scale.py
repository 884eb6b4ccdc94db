"""Cost follows the data, not the disk size: a 1 TiB sparse disk with a handful of data
blocks exports full and incremental without holding its index, and restores exactly."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypersdk.engine.plan import KEEP, READ, ZERO, plan_blocks
from hypersdk.errors import IntegrityError
from hypersdk.providers.base import Extent
from hypersdk.providers.raw import data_extents
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import restore_disk
from tests.chain import export

MIB = 1 << 20
TIB = 1 << 40
BLOCKS = TIB // MIB  # 1 Mi blocks: a 32 MiB index, four 8 MiB pieces when streamed


def reference_actions(capacity: int, bs: int, changed: list[Extent]) -> list[int]:
    """The per-block plan, one block at a time: the specification the runs must meet."""
    n = -(-capacity // bs)
    out = [KEEP] * n
    for ext in changed:
        if ext.zero:
            for b in range(ext.offset // bs, (ext.end - 1) // bs + 1):
                whole = ext.offset <= b * bs and ext.end >= min((b + 1) * bs, capacity)
                if out[b] != READ:
                    out[b] = ZERO if whole else READ
    for ext in changed:
        if not ext.zero:
            for b in range(ext.offset // bs, (ext.end - 1) // bs + 1):
                out[b] = READ
    return out


extent = st.tuples(st.integers(0, 2499), st.integers(1, 800), st.booleans())


@settings(max_examples=200, deadline=None)
@given(raw=st.lists(extent, max_size=8))
def test_plan_runs_match_a_per_block_plan(raw: list[tuple[int, int, bool]]) -> None:
    capacity, bs = 2500, 100
    changed = [Extent(o, min(n, capacity - o), zero=z) for o, n, z in raw]
    plan = plan_blocks(capacity, bs, changed)
    expected = reference_actions(capacity, bs, changed)
    assert list(plan.actions) == expected
    assert list(plan.blocks(READ)) == [b for b, a in enumerate(expected) if a == READ]
    assert list(plan.blocks(ZERO)) == [b for b, a in enumerate(expected) if a == ZERO]
    for action in (KEEP, READ, ZERO):
        assert plan.count(action) == expected.count(action)
    assert plan.read_bytes() == sum(plan.length(b) for b in plan.blocks(READ))


def block(n: int, gen: int) -> bytes:
    seed = hashlib.sha256(f"{n}/{gen}".encode()).digest()
    return seed * (MIB // len(seed))


def allocated(path: Path) -> list[tuple[int, int]]:
    """The file's data extents: a restore writes holes for zero blocks."""
    return [(e.offset, e.end) for e in data_extents(path)]


def test_a_1_tib_sparse_disk_costs_what_its_data_costs(tmp_path: Path) -> None:
    img = tmp_path / "disk.raw"
    # Data at both ends and on both sides of the index's 8 MiB piece boundaries.
    data = [0, 5, 262143, 262144, 524290, BLOCKS - 1]
    with open(img, "wb") as f:
        f.truncate(TIB)
        for b in data:
            f.seek(b * MIB)
            f.write(block(b, 0))
    repo = Repository.open_or_init(tmp_path / "repo", block_size=MIB)
    full_extents = [Extent(b * MIB, MIB) for b in data]

    tracemalloc.start()
    try:
        full = export(repo, {"disk-0": img}, changed={"disk-0": full_extents})
        # Incremental: block 5 rewritten, block 262143 trimmed, a zero range over a
        # piece boundary, block 700000 written for the first time.
        with open(img, "r+b") as f:
            for b, gen in ((5, 1), (700000, 1)):
                f.seek(b * MIB)
                f.write(block(b, gen))
            for b in (262143, 524290):
                f.seek(b * MIB)
                f.write(bytes(MIB))
        changed = [
            Extent(5 * MIB, MIB),
            Extent(262143 * MIB, MIB, zero=True),
            Extent(524284 * MIB, 8 * MIB, zero=True),
            Extent(700000 * MIB, MIB),
        ]
        incr = export(repo, {"disk-0": img}, changed={"disk-0": changed}, parent=full.manifest)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The index is 32 MiB: an export that held it whole (let alone a copy) goes past
    # that; streaming it needs two 8 MiB pieces besides the blocks in flight.
    assert peak < 32 * MIB, f"peak {peak / MIB:.1f} MiB"

    f_disk, i_disk = full.manifest.disks[0], incr.manifest.disks[0]
    assert (f_disk.blocks, f_disk.bytes_read, f_disk.zero_blocks) == (BLOCKS, 6 * MIB, BLOCKS - 6)
    assert (i_disk.bytes_read, i_disk.chunks_new) == (2 * MIB, 2)
    # 6 data blocks, one trimmed, 524290 zeroed by the range, 700000 new.
    assert i_disk.zero_blocks == BLOCKS - 5

    for manifest, present in (
        (full.manifest, {b: block(b, 0) for b in data}),
        (
            incr.manifest,
            {0: block(0, 0), 5: block(5, 1), 262144: block(262144, 0)}
            | {700000: block(700000, 1), BLOCKS - 1: block(BLOCKS - 1, 0)},
        ),
    ):
        out = tmp_path / f"{manifest.id}.raw"
        result = restore_disk(repo, manifest, "disk-0", out)
        assert result.zero_blocks == BLOCKS - len(present)
        expected_runs: list[tuple[int, int]] = []
        for b in sorted(present):
            if expected_runs and expected_runs[-1][1] == b * MIB:
                expected_runs[-1] = (expected_runs[-1][0], (b + 1) * MIB)
            else:
                expected_runs.append((b * MIB, (b + 1) * MIB))
        assert allocated(out) == expected_runs
        with open(out, "rb") as f:
            for b, expected in present.items():
                f.seek(b * MIB)
                assert f.read(MIB) == expected, b
        out.unlink()


def test_an_incremental_onto_a_damaged_parent_index_commits_nothing(tmp_path: Path) -> None:
    img = tmp_path / "disk.raw"
    with open(img, "wb") as f:
        f.truncate(64 * MIB)
        f.write(block(0, 0))
    repo = Repository.open_or_init(tmp_path / "repo", block_size=MIB)
    full = export(repo, {"disk-0": img}, changed={"disk-0": [Extent(0, MIB)]})
    idx = repo.layout.index("vm1", full.manifest.id, "disk-0")
    blob = bytearray(idx.read_bytes())
    blob[32 + 40 * 32] ^= 1  # an entry of a zero block: only the checksums can tell
    idx.write_bytes(blob)
    with pytest.raises(IntegrityError, match="does not match the checksum"):
        export(repo, {"disk-0": img}, changed={"disk-0": [Extent(0, MIB)]}, parent=full.manifest)
    assert [m.id for m in repo.generations("vm1")] == [full.manifest.id]
    assert not any(repo.layout.tmp.iterdir())
