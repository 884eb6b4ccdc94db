"""A repository with two generations of one 4 MiB disk (64 KiB blocks): runs of zero
blocks, and a second generation that changes some blocks and zeroes others."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from hypersdk.providers.base import Extent
from hypersdk.repository.manifest import Manifest
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import restore_disk
from tests.chain import BS, export

SIZE = 4 << 20


@dataclass
class Served:
    repo: Repository
    first: Manifest
    second: Manifest
    images: dict[str, Path]  # generation id -> its raw bytes (a restore)
    tmp: Path


def make_repo(tmp: Path) -> Served:
    repo = Repository.open_or_init(tmp / "repo", block_size=BS)
    img = tmp / "disk.raw"
    data = bytearray(SIZE)
    data[0 : 4 * BS] = os.urandom(4 * BS)
    data[10 * BS : 10 * BS + 5000] = os.urandom(5000)
    data[SIZE - BS :] = os.urandom(BS)
    img.write_bytes(data)
    first = export(repo, {"disk-0": img}).manifest
    data[BS : 2 * BS] = bytes(BS)  # zeroed
    data[20 * BS : 22 * BS] = os.urandom(2 * BS)
    img.write_bytes(data)
    changed = [Extent(BS, BS), Extent(20 * BS, 2 * BS)]
    second = export(repo, {"disk-0": img}, changed={"disk-0": changed}, parent=first).manifest
    images = {}
    for m in (first, second):
        out = tmp / f"restored-{m.id}.raw"
        restore_disk(repo, m, "disk-0", out)
        images[m.id] = out
    return Served(repo, first, second, images, tmp)


@pytest.fixture
def served_repo(tmp_path: Path) -> Served:
    return make_repo(tmp_path)
