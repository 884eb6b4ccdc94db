"""The gc mark set: spilled by first byte, read back one partition at a time."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from hypersdk.repository import markset
from hypersdk.repository.index import DiskIndex
from hypersdk.repository.markset import MarkSet


def test_marks_come_back_by_partition_and_leave_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(markset, "_FLUSH_BYTES", 1024)  # many flushes, appended in order
    ids = [hashlib.sha256(str(i).encode()).digest() for i in range(5000)]
    index = DiskIndex.empty(3 * 65536, 65536)
    index.set(1, ids[0])
    with MarkSet(tmp_path / "tmp") as marks:
        for cid in ids:
            marks.add(cid)
        marks.add(ids[7])  # duplicates are fine
        marks.add_index(index)
        folder = next((tmp_path / "tmp").iterdir())
        got = set()
        for first in range(markset.PARTITIONS):
            part = marks.partition(first)
            assert all(cid[0] == first for cid in part)
            got |= part
        assert got == set(ids) and marks.added == 5002
    assert not folder.exists()  # the spill files go with the set


def test_gc_marks_and_sweeps_by_partition_and_cleans_up(tmp_path: Path) -> None:
    from hypersdk.repository.gc import collect_garbage
    from hypersdk.repository.repository import Repository
    from tests.chain import BS, export

    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    image = tmp_path / "d.raw"
    image.write_bytes(random.Random(1).randbytes(40 * BS))
    first = export(repo, {"d": image}).manifest
    with image.open("r+b") as f:
        f.write(b"\x01" * (3 * BS))  # one new chunk; three old ones unreferenced later
    export(repo, {"d": image}, parent=first)
    repo.delete_generation("vm1", first.id)
    phases: list[tuple[str, int, int]] = []
    report = collect_garbage(repo, progress=lambda *p: phases.append(p))
    assert report.chunks_removed == 3 and report.chunks_kept == 38
    assert phases[0] == ("mark", 1, 1) and phases[-1] == ("sweep", 256, 256)
    assert list((tmp_path / "repo" / "tmp").iterdir()) == []  # the spill folder is gone
