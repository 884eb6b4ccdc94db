"""Restore into an existing raw file: only the blocks that differ are written, and the
result is byte-identical to the generation."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from hypersdk.engine.restore_into import prepare_into, run_into
from hypersdk.errors import IntegrityError, NotFoundError, UsageError
from hypersdk.repository.index import DiskIndex
from hypersdk.repository.restore_into import (
    FileTarget,
    IntoResult,
    changed_blocks,
    plan_into,
    restore_into,
)
from tests.chain import BS, export
from tests.restore.helpers import BLOCKS, Pair, make_pair

SENTINEL = b"\x5a" * BS


def _into(pair: Pair, target: Path, since: str | None, compare: bool = False) -> IntoResult:
    job = prepare_into(
        pair.repo.root, "vm1", pair.g.id, None, str(target), since=since, compare=compare
    )
    return run_into(job, parallel=3)


def test_since_writes_only_the_changed_blocks(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    target = pair.restore(pair.f, tmp_path / "target.raw")
    # A sentinel in every block: it must survive exactly where F and G agree.
    with open(target, "r+b") as fh:
        for b in range(BLOCKS):
            fh.seek(b * BS)
            fh.write(SENTINEL)

    result = _into(pair, target, pair.f.id)

    data = target.read_bytes()
    for b in range(BLOCKS):
        block = data[b * BS : (b + 1) * BS]
        if b in pair.changed:
            assert block == pair.g_bytes[b * BS : (b + 1) * BS], b
        else:
            assert block == SENTINEL, f"block {b} was written though F and G agree"
    assert result.blocks_changed == len(pair.changed)
    assert result.bytes_written == len(pair.changed) * BS
    assert result.blocks_zeroed == 1
    assert result.bytes_read_target == 0
    assert result.bytes_read_repository == (len(pair.changed) - 1) * BS
    assert result.mode == "since" and result.since == pair.f.id
    assert result.generation == pair.g.id and result.target_format == "raw"


def test_since_result_is_byte_identical_and_sparse(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    target = pair.restore(pair.f, tmp_path / "target.raw")
    _into(pair, target, pair.f.id)
    assert target.read_bytes() == pair.g_bytes
    # block 9 became zero: a hole was punched there, the file stays sparse
    fd = os.open(target, os.O_RDONLY)
    try:
        assert os.lseek(fd, 9 * BS, os.SEEK_HOLE) == 9 * BS
    finally:
        os.close(fd)


def test_back_to_an_older_generation(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    target = pair.restore(pair.g, tmp_path / "target.raw")
    job = prepare_into(
        pair.repo.root, "vm1", pair.f.id, None, str(target), since=pair.g.id, compare=False
    )
    result = run_into(job)
    assert target.read_bytes() == pair.f_bytes
    assert result.blocks_changed == len(pair.changed)


def test_compare_repairs_random_damage_exactly(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    target = pair.restore(pair.g, tmp_path / "target.raw")
    rng = random.Random(5)
    damaged = sorted(rng.sample(range(BLOCKS), 7))
    damaged_set = set(damaged) | {3, 9}
    with open(target, "r+b") as fh:
        for b in damaged:
            fh.seek(b * BS + rng.randrange(BS - 16))
            fh.write(os.urandom(16))
        fh.seek(3 * BS + 100)  # a zero block that got data
        fh.write(b"x")
        fh.seek(9 * BS)  # ... and a zeroed block stays zero: no damage there
    # a data block wiped to zeros is damage too
    wiped = next(b for b in range(BLOCKS) if b not in damaged_set and b not in (4, 20))
    with open(target, "r+b") as fh:
        fh.seek(wiped * BS)
        fh.write(bytes(BS))
    expected = (set(damaged) | {3, wiped}) - set()

    result = _into(pair, target, None, compare=True)

    assert target.read_bytes() == pair.g_bytes
    assert result.blocks_changed == len(expected)
    assert result.bytes_written == len(expected) * BS
    assert result.bytes_read_target == BLOCKS * BS
    assert result.mode == "compare" and result.since is None
    # a second pass finds nothing to do
    again = _into(pair, target, None, compare=True)
    assert again.blocks_changed == 0 and again.bytes_written == 0


def test_grown_disk_resizes_a_raw_file(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, g_blocks=BLOCKS + 6)
    target = pair.restore(pair.f, tmp_path / "target.raw")
    result = _into(pair, target, pair.f.id)
    assert target.read_bytes() == pair.g_bytes
    assert result.resized_from == BLOCKS * BS
    assert result.blocks_changed == len(pair.changed)


def test_shrunk_disk_resizes_a_raw_file(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, g_blocks=BLOCKS - 10)
    target = pair.restore(pair.f, tmp_path / "target.raw")
    _into(pair, target, pair.f.id)
    assert target.read_bytes() == pair.g_bytes


def test_size_mismatch_is_refused(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    target = tmp_path / "small.raw"
    target.write_bytes(bytes(BS * 3))
    with pytest.raises(UsageError, match="does not hold that generation"):
        _into(pair, target, pair.f.id)
    with pytest.raises(UsageError, match="same size"):
        _into(pair, target, None, compare=True)
    assert target.read_bytes() == bytes(BS * 3)


def test_target_must_exist_and_not_be_a_link(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    with pytest.raises(NotFoundError, match="does not exist"):
        _into(pair, tmp_path / "nope.raw", pair.f.id)
    real = pair.restore(pair.f, tmp_path / "real.raw")
    link = tmp_path / "link.raw"
    link.symlink_to(real)
    with pytest.raises(UsageError, match="symbolic link"):
        _into(pair, link, pair.f.id)
    # the low-level target refuses a link too (O_NOFOLLOW), whoever calls it
    with pytest.raises(UsageError, match="symbolic link"):
        FileTarget(link)
    assert not (tmp_path / "nope.raw").exists()


def test_since_and_compare_exclude_each_other(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    target = pair.restore(pair.f, tmp_path / "t.raw")
    with pytest.raises(UsageError, match="exclude"):
        _into(pair, target, pair.f.id, compare=True)


def test_since_of_another_vm_is_refused(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    other = tmp_path / "o.raw"
    other.write_bytes(os.urandom(BLOCKS * BS))
    o = export(pair.repo, {"disk-0": other}, name="vm2").manifest
    with pytest.raises(UsageError, match="not of"):
        plan_into(pair.repo, pair.g, "disk-0", o)


def test_a_missing_chunk_stops_the_restore(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    target = pair.restore(pair.f, tmp_path / "t.raw")
    plan = plan_into(pair.repo, pair.g, "disk-0", pair.f)
    assert plan.blocks is not None
    cid = next(c for c in map(plan.index.get, plan.blocks) if c is not None)
    pair.repo.layout.chunk(cid).unlink()
    with FileTarget(target) as t, pytest.raises(IntegrityError, match="missing"):
        restore_into(plan, t, target_name=str(target), target_format="raw")


@pytest.mark.parametrize("new_blocks", [2500, 3000, 3500])
def test_changed_blocks_matches_a_block_by_block_diff(new_blocks: int) -> None:
    """Across several comparison windows, and with G shorter or longer than F."""
    rng = random.Random(new_blocks)
    old = DiskIndex.empty(3000 * BS, BS)
    for b in rng.sample(range(3000), 900):
        old.set(b, rng.randbytes(32))
    new = DiskIndex.empty(new_blocks * BS, BS)
    for b in range(min(3000, new_blocks)):
        new.set(b, old.get(b))
    for b in rng.sample(range(new_blocks), 40):
        new.set(b, rng.randbytes(32) if rng.random() < 0.7 else None)
    naive = [b for b in range(new_blocks) if new.get(b) != (old.get(b) if b < old.blocks else None)]
    assert list(changed_blocks(old, new)) == naive
