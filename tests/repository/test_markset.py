"""The gc mark set: spilled by first byte, read back one partition at a time."""

from __future__ import annotations

import hashlib
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
