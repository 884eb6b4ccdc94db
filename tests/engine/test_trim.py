"""A zeroed (trimmed) region in an incremental must restore as zeros, not as old data."""

from __future__ import annotations

import os
from pathlib import Path

from hypersdk.providers.base import Extent
from hypersdk.repository.repository import Repository
from tests.chain import BS, export, restored_bytes


def test_trimmed_region_restores_as_zeros(tmp_path: Path) -> None:
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    img = tmp_path / "disk.raw"
    img.write_bytes(os.urandom(8 * BS))
    full = export(repo, {"d": img})
    # trim 3.5 blocks starting mid-block: two whole blocks, two partial ones
    with open(img, "r+b") as f:
        f.seek(BS + BS // 2)
        f.write(bytes(3 * BS))
    inc = export(
        repo,
        {"d": img},
        changed={"d": [Extent(BS + BS // 2, 3 * BS, zero=True)]},
        parent=full.manifest,
    )
    assert inc.manifest.type == "incremental"
    restored = restored_bytes(repo, inc.manifest, "d", tmp_path)
    assert restored == img.read_bytes()
    assert restored[2 * BS : 4 * BS] == bytes(2 * BS)
    # the two whole blocks were recorded as zero without reading them
    assert inc.bytes_read == 2 * BS
    assert inc.manifest.disks[0].zero_blocks == 2


def test_unchanged_blocks_are_not_read(tmp_path: Path) -> None:
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    img = tmp_path / "disk.raw"
    img.write_bytes(os.urandom(32 * BS))
    full = export(repo, {"d": img})
    with open(img, "r+b") as f:
        f.seek(5 * BS + 7)
        f.write(b"changed")
    inc = export(repo, {"d": img}, changed={"d": [Extent(5 * BS + 7, 7)]}, parent=full.manifest)
    assert inc.bytes_read == BS
    assert inc.manifest.stats["chunks_new"] == 1
    assert restored_bytes(repo, inc.manifest, "d", tmp_path) == img.read_bytes()
    assert restored_bytes(repo, full.manifest, "d", tmp_path) != img.read_bytes()
