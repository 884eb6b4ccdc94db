"""A chunk is never trusted because its file exists (issue 8, item 2).

A power cut after a rename but before the data reached the disk leaves a chunk's final
name over empty or zeroed bytes. The next export must not reuse such a file, and the
commit order must make a chunk's name durable only after its bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import hypersdk.repository.storage.local as chunkstore
from hypersdk.repository.envelope import HEADER, Codec, Compression
from hypersdk.repository.repository import Repository
from hypersdk.repository.verify import select, verify
from tests.chain import BS, export, restored_bytes


def _blocks(data: bytes) -> list[bytes]:
    return [data[i : i + BS] for i in range(0, len(data), BS)]


@pytest.mark.parametrize("damage", ["empty", "zeroed"])
def test_a_damaged_chunk_under_its_final_name_is_rewritten(tmp_path: Path, damage: str) -> None:
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    img = tmp_path / "disk.raw"
    img.write_bytes(os.urandom(6 * BS))
    first = export(repo, {"disk-0": img})
    # The next export will meet these blocks: the state a power cut leaves when the
    # renames of a crashed export reached the disk and its data did not.
    new = os.urandom(3 * BS) + b"compressible " * (BS // 13) + bytes(BS % 13)
    img.write_bytes(img.read_bytes()[: 2 * BS] + new)
    for block in _blocks(new):
        cid = repo.codec.chunk_id(block)
        path = repo.layout.chunk(cid)
        path.parent.mkdir(parents=True, exist_ok=True)
        size = len(repo.codec.seal(block))
        path.write_bytes(b"" if damage == "empty" else bytes(size))
    assert all(repo.chunks.has(repo.codec.chunk_id(b)) for b in _blocks(new))

    second = export(repo, {"disk-0": img}, parent=first.manifest)

    assert restored_bytes(repo, second.manifest, "disk-0", tmp_path) == img.read_bytes()
    report = verify(repo, select(repo, None, None))
    assert report.ok, report.damage
    assert report.generations == 2
    assert second.disks["disk-0"].chunks_rewritten == len(_blocks(new))


def test_reuse_check_reads_the_envelope_only() -> None:
    codec = Codec(Compression.ZSTD, 1)
    data = b"hello " * 10000
    sealed = codec.seal(data)
    cid = codec.chunk_id(data)
    assert codec.reusable(sealed, cid)
    assert not codec.reusable(b"", cid)
    assert not codec.reusable(bytes(len(sealed)), cid)
    assert not codec.reusable(sealed[:-1], cid)
    assert not codec.reusable(sealed + b"\0", cid)
    flipped = bytearray(sealed)
    flipped[HEADER.size + 3] ^= 1
    assert not codec.reusable(bytes(flipped), cid)


def test_chunk_names_are_given_only_after_a_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every new chunk existed as a synced temp file before its final name existed."""
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    img = tmp_path / "disk.raw"
    img.write_bytes(os.urandom(40 * BS))
    syncs: list[tuple[set[str], set[str]]] = []
    real_sync = chunkstore.sync_filesystem

    def recording_sync(path: Path) -> None:
        temps = {p.name.split(".")[0] for p in repo.chunks.leftovers()}
        names = {cid.hex() for cid, _ in repo.chunks.all()}
        syncs.append((temps, names))
        real_sync(path)

    monkeypatch.setattr(chunkstore, "sync_filesystem", recording_sync)
    monkeypatch.setattr(chunkstore, "BATCH_BYTES", 8 * BS)  # several batches

    result = export(repo, {"disk-0": img})

    new = {cid.hex() for _, cid in repo.load_index(result.manifest, "disk-0").chunks()}
    assert len(new) == 40
    assert len(syncs) >= 4, "chunks were named in batches, each after a sync"
    for cid in new:
        assert any(cid in temps and cid not in names for temps, names in syncs), cid
    assert not list(repo.chunks.leftovers())
