"""Reading a large sparse index costs the memory of its data blocks' entries, not of the
disk: a 62 TiB disk's index is 2 GiB, and verify, restore and serve each read one."""

from __future__ import annotations

import hashlib
import mmap
import os
from pathlib import Path

import pytest

from hypersdk.errors import IntegrityError
from hypersdk.repository import index as index_mod
from hypersdk.repository.index import ENTRY, HEADER, DiskIndex, build_index

MIB = 1 << 20
CAPACITY = 4 << 40  # 4 TiB at 1 MiB blocks: a 128 MiB index
BLOCKS = [5, 6, 1 << 21, (CAPACITY // MIB) - 1]


def cid(n: int) -> bytes:
    return hashlib.sha256(n.to_bytes(8, "little")).digest()


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "disk.idx"
    runs = [(5, 7), (1 << 21, (1 << 21) + 1), (BLOCKS[-1], BLOCKS[-1] + 1)]
    built = build_index(path, CAPACITY, MIB, None, runs, b"".join(cid(b) for b in BLOCKS), [])
    return path, built.sha256


def test_sparse_index_reads_into_untouched_memory(stored: tuple[Path, str]) -> None:
    path, sha = stored
    before = rss()
    index = DiskIndex.read(path, sha)
    assert list(index.nonzero_blocks()) == BLOCKS  # a scan reads every page
    grown = rss() - before
    assert grown < 16 * MIB, f"a sparse 128 MiB index took {grown / MIB:.0f} MiB"
    assert isinstance(index.entries, mmap.mmap)
    assert [index.get(b) for b in BLOCKS] == [cid(b) for b in BLOCKS]
    assert index.get(7) is None and index.blocks == CAPACITY // MIB
    index.set(8, cid(8))  # writable, like a bytearray
    assert index.get(8) == cid(8)


def test_a_small_index_stays_a_bytearray(stored: tuple[Path, str], tmp_path: Path) -> None:
    path = tmp_path / "small.idx"
    built = build_index(path, 64 * MIB, MIB, None, [(3, 4)], cid(3), [])
    index = DiskIndex.read(path, built.sha256)
    assert isinstance(index.entries, bytearray)
    assert list(index.chunks()) == [(3, cid(3))]


def test_data_written_into_a_hole_fails_the_checksum(stored: tuple[Path, str]) -> None:
    path, sha = stored
    with open(path, "r+b") as f:  # a chunk id where the index says "zero"
        f.seek(HEADER.size + 3 * ENTRY)
        f.write(cid(3))
    with pytest.raises(IntegrityError, match="checksum in the manifest"):
        DiskIndex.read(path, sha)


def test_a_punched_data_piece_fails_the_checksum(
    stored: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, sha = stored
    # A file system that calls the piece with the data blocks a hole: it reads as zeros,
    # and the checksum must catch it.
    real = index_mod._PlainSource.is_hole
    monkeypatch.setattr(
        index_mod._PlainSource, "is_hole", lambda self, off, n: off > 0 or real(self, off, n)
    )
    with pytest.raises(IntegrityError, match="checksum in the manifest"):
        DiskIndex.read(path, sha)


def test_zero_pages_of_a_piece_stay_holes(tmp_path: Path) -> None:
    """One 8 MiB piece of entries covers 256 GiB of disk: two data blocks far apart in
    it take two pages on disk, not the whole piece."""
    path = tmp_path / "spread.idx"
    far = 200_000
    built = build_index(path, 256 << 30, MIB, None, [(0, 1), (far, far + 1)], cid(0) + cid(far), [])
    assert path.stat().st_size == HEADER.size + (256 << 10) * ENTRY + 32
    assert path.stat().st_blocks * 512 <= 16 << 10, "the zero pages were written"
    index = DiskIndex.read(path, built.sha256)
    assert list(index.chunks()) == [(0, cid(0)), (far, cid(far))]
    assert built.zero_blocks == (256 << 10) - 2


def test_run_end_follows_runs_and_ignores_zeros_across_two_ids() -> None:
    index = DiskIndex.empty(10 * 65536, 65536)
    for block in (2, 3, 8):
        index.set(block, bytes([block]) * 32)
    # 16 zero bytes ending block 4's id and 16 starting block 5's: 32 zeros in a row that
    # are no zero entry (ids are hashes: rare, but it must not end a data run)
    index.set(4, b"\x04" * 16 + bytes(16))
    index.set(5, bytes(16) + b"\x05" * 16)
    assert index.run_end(0, 10) == 2
    assert index.run_end(2, 10) == 6
    assert index.run_end(2, 3) == 3  # never past the limit
    assert index.run_end(6, 10) == 8
    assert index.run_end(8, 10) == 9
    assert index.run_end(9, 10) == 10
