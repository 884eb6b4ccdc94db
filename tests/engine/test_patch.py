"""Sub-block incrementals (engine.patch): a block changed in small parts is its parent's
copy with only the changed bytes read from the disk. Every generation restores byte
for byte; the bytes read are the changed ones; a damaged parent chunk is never used."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from hypersdk.engine.patch import MERGE_GAP, Patcher
from hypersdk.engine.plan import plan_blocks
from hypersdk.engine.writer import GenerationResult, GenerationWriter
from hypersdk.errors import IntegrityError
from hypersdk.providers.base import Extent, FrozenDisk
from hypersdk.providers.raw import RawImageReader
from hypersdk.repository.keys import Password
from hypersdk.repository.manifest import Manifest
from hypersdk.repository.repository import Keys, Repository
from tests.chain import BS, restored_bytes, vm

CAP = 24 * BS + 40000  # a partial last block on purpose


class PatchingReader(RawImageReader):
    """A raw image read like a costly remote disk: patches allowed; every read kept."""

    patch_threshold = 0.5
    request_bytes = 16 * 1024  # a request costs as much as 16 KiB more of a read

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def pread(self, offset: int, length: int) -> bytes:
        with self._lock:
            self.reads.append((offset, length))
        return super().pread(offset, length)


def _export(
    repo: Repository, img: Path, changed: list[Extent] | None, parent: Manifest | None
) -> tuple[GenerationResult, PatchingReader]:
    with PatchingReader(img) as reader:
        disk = FrozenDisk("d0", img.stat().st_size, "c", changed, reader)
        with GenerationWriter(repo, vm()) as w:
            return w.write([disk], parent=parent, reason="test", parallel=3), reader


def _change(img: Path, rng: random.Random, offset: int, length: int, zero: bool) -> Extent:
    with open(img, "r+b") as f:
        f.seek(offset)
        f.write(bytes(length) if zero else rng.randbytes(length))
    return Extent(offset, length, zero)


@pytest.mark.parametrize("encrypted", [False, True])
def test_small_changes_are_patched_and_restore_exactly(tmp_path: Path, encrypted: bool) -> None:
    rng = random.Random(7)
    password = Password(value="pw") if encrypted else None
    repo = Repository.open_or_init(
        tmp_path / "repo", block_size=BS, password=password, encrypt=encrypted
    )
    img = tmp_path / "disk.raw"
    data = bytearray(rng.randbytes(CAP))
    data[5 * BS : 6 * BS] = bytes(BS)  # a zero block in the parent
    img.write_bytes(data)
    full, _ = _export(repo, img, None, None)
    changes = [
        _change(img, rng, 2 * BS + 100, 300, False),  # small: patched
        _change(img, rng, 2 * BS + 9000, 200, False),  # near the first: one range
        _change(img, rng, 5 * BS + 4096, 1000, False),  # on a parent zero block
        _change(img, rng, 9 * BS + 10, 20 * 1024, True),  # zeroed in part, no read
        _change(img, rng, 12 * BS, 3 * BS // 4, False),  # most of a block: read whole
        _change(img, rng, 15 * BS - 50, 100, False),  # across two blocks: both patched
        _change(img, rng, CAP - 7, 7, False),  # the very end of the disk
    ]
    inc, reader = _export(repo, img, changes, full.manifest)
    assert restored_bytes(repo, inc.manifest, "d0", tmp_path) == img.read_bytes()
    assert restored_bytes(repo, full.manifest, "d0", tmp_path) == bytes(data)
    # The disk was read for the changed data only, plus block 12 whole.
    wanted = {
        (2 * BS + 100, 9100),
        (5 * BS + 4096, 1000),
        (12 * BS, BS),
        (15 * BS - 50, 50),
        (15 * BS, 50),
        (CAP - 7, 7),
    }
    assert set(reader.reads) == wanted
    assert inc.bytes_read == sum(n for _, n in wanted)


def test_a_damaged_parent_chunk_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A parent chunk that fails the codec's check (or is gone) is never patched: its
    block is read whole, and the new generation is still exact."""
    rng = random.Random(3)
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    img = tmp_path / "disk.raw"
    img.write_bytes(rng.randbytes(CAP))
    full, _ = _export(repo, img, None, None)
    index = repo.load_index(full.manifest, "d0")
    damaged, missing = index.get(3), index.get(7)
    assert damaged is not None and missing is not None
    path = repo.root / Keys.chunk(damaged)
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF  # bit rot in the payload
    os.chmod(path, 0o644)
    path.write_bytes(bytes(blob))
    (repo.root / Keys.chunk(missing)).unlink()
    changes = [
        _change(img, rng, 3 * BS + 500, 100, False),
        _change(img, rng, 7 * BS + 500, 100, False),
        _change(img, rng, 10 * BS + 500, 100, False),
    ]
    inc, reader = _export(repo, img, changes, full.manifest)
    assert restored_bytes(repo, inc.manifest, "d0", tmp_path) == img.read_bytes()
    assert sorted(reader.reads) == [(3 * BS, BS), (7 * BS, BS), (10 * BS + 500, 100)]
    assert damaged.hex() in caplog.text and missing.hex() in caplog.text


def test_patch_plan_follows_the_extents_not_the_disk(tmp_path: Path) -> None:
    """Which blocks are patched, on a disk of 2**40 blocks' size: only the first and
    last block of an extent can be touched in part; blocks a data extent covers whole
    are read whole; a zero-only block the plan records as zero is left to it."""
    bs = 1 << 20
    cap = (1 << 40) + 4096
    changed = [
        Extent(10 * bs + 5, 100),  # small
        Extent(20 * bs - 10, 5 * bs),  # a large extent: ends in part, middle whole
        Extent(22 * bs + 7, 30),  # inside the large one's whole block 22
        Extent(40 * bs, bs, zero=True),  # a whole zero block: the plan's, not ours
        Extent(41 * bs + 100, MERGE_GAP, zero=True),
        Extent(cap - 4096, 4096),  # the short last block, all of it changed
        Extent(cap - 4096 - 300, 10),  # its neighbour
    ]
    img = tmp_path / "empty.raw"
    img.write_bytes(b"")
    with PatchingReader(img) as reader:
        disk = FrozenDisk("d0", cap, "c", changed, reader)
        plan = plan_blocks(cap, bs, changed)
        repo = Repository.open_or_init(tmp_path / "repo", block_size=bs)
        patcher = Patcher(repo, disk, plan, None, threshold=0.5)
        assert patcher._patches == {}  # no parent: nothing to patch
        small = patcher._small_changes(0.5)
    last = (cap - 1) // bs
    assert sorted(small) == [10, 19, 41, last - 1]
    assert small[10].data == [(5, 105)] and small[19].data == [(bs - 10, bs)]
    assert small[41].data == [] and small[41].zero == [(100, 100 + MERGE_GAP)]


def test_a_damaged_parent_index_fails_the_export(tmp_path: Path) -> None:
    """The parent index's entries are read for the patched blocks before the index is
    checked whole: an entry swapped for another stored chunk's id would patch the wrong
    base. The streamed index build checks the parent index's SHA-256, so the export
    fails and commits nothing."""
    rng = random.Random(5)
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    img = tmp_path / "disk.raw"
    img.write_bytes(rng.randbytes(CAP))
    full, _ = _export(repo, img, None, None)
    record = full.manifest.disk("d0")
    assert record is not None
    path = repo.root / record.index
    raw = bytearray(path.read_bytes())
    first = 32 + 3 * 32  # block 3's entry: now block 4's chunk
    raw[first : first + 32] = raw[first + 32 : first + 64]
    os.chmod(path, 0o644)
    path.write_bytes(bytes(raw))
    changes = [_change(img, rng, 3 * BS + 500, 100, False)]
    with pytest.raises(IntegrityError):
        _export(repo, img, changes, full.manifest)
    assert [m.id for m in repo.generations("vm1")] == [full.manifest.id]
