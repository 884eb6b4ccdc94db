"""Two generations F and G of one raw disk, and what differs between them."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from hypersdk.providers.base import Extent
from hypersdk.repository.manifest import Manifest
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import restore_disk
from tests.chain import BS, export

BLOCKS = 48


@dataclass
class Pair:
    repo: Repository
    f: Manifest
    g: Manifest
    f_bytes: bytes
    g_bytes: bytes
    changed: list[int]  # blocks whose content differs between F and G

    def restore(self, manifest: Manifest, path: Path) -> Path:
        restore_disk(self.repo, manifest, "disk-0", path, force=True)
        return path


def make_pair(
    tmp: Path,
    *,
    blocks: int = BLOCKS,
    g_blocks: int | None = None,
    raw: tuple[bytes, bytes] | None = None,
) -> Pair:
    """F: random data with a few zero blocks. G: some blocks rewritten, one data block
    zeroed, one zero block filled (and a size change when ``g_blocks`` is given).
    ``raw``: F's and G's bytes as given instead (both full exports)."""
    rng = random.Random(11)
    tmp.mkdir(parents=True, exist_ok=True)
    repo = Repository.open_or_init(tmp / "repo", block_size=BS)
    if raw is not None:
        image = tmp / "disk.raw"
        image.write_bytes(raw[0])
        f = export(repo, {"disk-0": image}).manifest
        image.write_bytes(raw[1])
        g = export(repo, {"disk-0": image}).manifest
        image.unlink()
        a, b = raw
        changed = [
            i for i in range(len(b) // BS) if a[i * BS : (i + 1) * BS] != b[i * BS : (i + 1) * BS]
        ]
        return Pair(repo, f, g, a, b, changed)
    f_data = bytearray(os.urandom(blocks * BS))
    for b in (3, 4, 20):
        f_data[b * BS : (b + 1) * BS] = bytes(BS)
    image = tmp / "disk.raw"
    image.write_bytes(f_data)
    f = export(repo, {"disk-0": image}).manifest

    g_data = bytearray(f_data)
    rewritten = sorted(rng.sample([b for b in range(blocks) if b not in (3, 4, 20, 9)], 5))
    for b in rewritten:
        g_data[b * BS : (b + 1) * BS] = os.urandom(BS)
    g_data[9 * BS : 10 * BS] = bytes(BS)  # data -> zero
    g_data[20 * BS : 21 * BS] = os.urandom(BS)  # zero -> data
    extents = [Extent(b * BS, BS) for b in [*rewritten, 20]] + [Extent(9 * BS, BS, zero=True)]
    changed = sorted([*rewritten, 9, 20])
    if g_blocks is not None and g_blocks != blocks:
        if g_blocks > blocks:
            g_data += os.urandom((g_blocks - blocks) * BS)
            changed += list(range(blocks, g_blocks))
        else:
            del g_data[g_blocks * BS :]
            changed = [b for b in changed if b < g_blocks]
        image.write_bytes(g_data)
        g = export(repo, {"disk-0": image}).manifest  # a size change is a full export
    else:
        image.write_bytes(g_data)
        g = export(repo, {"disk-0": image}, changed={"disk-0": extents}, parent=f).manifest
    image.unlink()
    return Pair(repo, f, g, bytes(f_data), bytes(g_data), changed)
