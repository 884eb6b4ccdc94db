"""Repositories made before BLAKE3 keep naming chunks by SHA-256: exports, restores,
verify and copies work across the two hashes, and a copy never takes a chunk under a name
the target's hash did not give it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hypersdk.engine.copy import copy_generations, select
from hypersdk.repository.envelope import chunk_id
from hypersdk.repository.repository import Repository
from hypersdk.repository.verify import verify
from tests.chain import export, restored_bytes

BS = 64 * 1024


def sha256_repository(path: Path) -> Repository:
    """A plain repository as this tool made them before BLAKE3 (config "hash": "sha256")."""
    Repository.open_or_init(path, block_size=BS)
    config = path / "config"
    doc = json.loads(config.read_text())
    config.write_text(json.dumps({**doc, "hash": "sha256"}))
    return Repository.open(path)


def chunk_names(repo: Repository) -> set[bytes]:
    return {cid for cid, _ in repo.chunks.ids()}


def test_new_repositories_use_blake3_and_old_ones_keep_sha256(tmp_path: Path) -> None:
    img = tmp_path / "disk.raw"
    data = os.urandom(5 * BS)
    img.write_bytes(data)
    new = Repository.open_or_init(tmp_path / "new", block_size=BS)
    old = sha256_repository(tmp_path / "old")
    assert new.config.hash == "blake3" and old.config.hash == "sha256"
    for repo, name in ((new, "blake3"), (old, "sha256")):
        gen = export(repo, {"disk-0": img}).manifest
        assert chunk_names(repo) == {chunk_id(data[i : i + BS], name) for i in range(0, 5 * BS, BS)}
        assert restored_bytes(repo, gen, "disk-0", tmp_path) == data
        assert verify(repo, select(repo, None, None)).ok


def test_copy_between_hashes_renames_every_chunk(tmp_path: Path) -> None:
    img = tmp_path / "disk.raw"
    data = os.urandom(4 * BS) + b"x" * BS
    img.write_bytes(data)
    old = sha256_repository(tmp_path / "old")
    export(old, {"disk-0": img})
    new = Repository.open_or_init(tmp_path / "new", block_size=BS)
    # A file in the target under a source (SHA-256) name must not be taken for the block:
    # the target names that content otherwise, and this file holds other bytes.
    decoy = data[:BS]
    sha_name = chunk_id(decoy, "sha256")
    path = new.layout.chunk(sha_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(new.codec.seal(b"not this block"))

    copy_generations(old, new, select(old, None, None))

    (gen,) = select(new, None, None)
    assert restored_bytes(new, gen, "disk-0", tmp_path) == data
    blocks = {chunk_id(data[i : i + BS], "blake3") for i in range(0, 5 * BS, BS)}
    assert blocks <= chunk_names(new)
    back = sha256_repository(tmp_path / "back")  # and back into SHA-256 names
    copy_generations(new, back, select(new, None, None))
    (gen,) = select(back, None, None)
    assert restored_bytes(back, gen, "disk-0", tmp_path) == data
    assert verify(back, select(back, None, None)).ok
