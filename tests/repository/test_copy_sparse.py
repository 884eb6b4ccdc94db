"""A copy follows the data, not the disk size: the target's index entries of a sparse
4 TiB disk (128 MiB of entries) are built without 128 MiB of memory."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

from hypersdk.engine.copy import copy_generations, select
from hypersdk.providers.raw import data_extents
from hypersdk.repository.repository import Repository
from tests.chain import export

MiB = 1 << 20
TiB = 1 << 40


def test_copy_of_a_sparse_4_tib_disk_stays_small(tmp_path: Path) -> None:
    img = tmp_path / "disk.raw"
    with open(img, "wb") as f:
        f.truncate(4 * TiB)
        for offset in (0, 3 * TiB + 7 * MiB):
            f.seek(offset)
            f.write(os.urandom(MiB))
    source = Repository.open_or_init(tmp_path / "a")
    gen = export(source, {"disk-0": img}, changed={"disk-0": data_extents(img)}).manifest
    target = Repository.open_or_init(tmp_path / "b")

    tracemalloc.start()
    try:
        copy_generations(source, target, select(source, None, None))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 48 * MiB, peak  # a bytearray of the entries alone would be 128 MiB
    (copied,) = select(target, None, None)
    index = target.load_index(copied, "disk-0")
    assert [b for b, _ in index.chunks()] == [0, 3 * 1024 * 1024 + 7]
    assert copied.id == gen.id
