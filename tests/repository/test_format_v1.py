"""Version 1 repositories and objects are still read, and upgraded by their next writer.

tests/repository/data/v1-repo was made by HyperSDK before format 2 (commit a866c94):
two generations of one disk with zstd, lz4 and stored chunks, a zero block and a short
last block.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from hypersdk.errors import IntegrityError
from hypersdk.repository.envelope import Codec
from hypersdk.repository.repository import Repository
from hypersdk.repository.verify import select, verify
from tests.chain import export, restored_bytes

DATA = Path(__file__).parent / "data"


@pytest.fixture()
def v1(tmp_path: Path) -> tuple[Repository, dict[str, str]]:
    root = tmp_path / "v1-repo"
    shutil.copytree(DATA / "v1-repo", root)
    expected = json.loads((DATA / "v1-repo.expected.json").read_text())["sha256"]
    return Repository.open(root), expected


def test_a_version_1_repository_restores_and_verifies(
    v1: tuple[Repository, dict[str, str]], tmp_path: Path
) -> None:
    repo, expected = v1
    assert repo.config.version == 1
    assert repo.vm_ids() == ["vm1"]
    gens = repo.generations("vm1")
    assert sorted(m.id for m in gens) == sorted(expected)
    for m in gens:
        data = restored_bytes(repo, m, "disk-0", tmp_path)
        assert hashlib.sha256(data).hexdigest() == expected[m.id]
    report = verify(repo, select(repo, None, None))
    assert report.ok and report.chunks_checked == 4


def test_the_next_writer_upgrades_it_to_version_2(
    v1: tuple[Repository, dict[str, str]], tmp_path: Path
) -> None:
    repo, expected = v1
    gens = repo.generations("vm1")
    img = tmp_path / "disk.raw"
    img.write_bytes(restored_bytes(repo, gens[-1], "disk-0", tmp_path))
    with open(img, "r+b") as f:
        f.seek(65536)
        f.write(os.urandom(1000))
    new = export(repo, {"disk-0": img}, parent=gens[-1])
    config = json.loads((repo.root / "config").read_text())
    assert config["version"] == 2 and config["id"] == repo.config.id
    assert json.loads(repo.layout.manifest("vm1", new.manifest.id).read_text())["version"] == 2
    reopened = Repository.open(repo.root)
    assert restored_bytes(reopened, new.manifest, "disk-0", tmp_path) == img.read_bytes()
    for m in gens:
        data = restored_bytes(reopened, m, "disk-0", tmp_path)
        assert hashlib.sha256(data).hexdigest() == expected[m.id]
    # v1 chunks reused by the new generation were checked (decoded in full) before reuse
    assert new.disks["disk-0"].chunks_reused == 3
    assert verify(reopened, select(reopened, None, None)).ok


def _v1_object(method: int, plaintext: bytes, payload: bytes) -> bytes:
    """A chunk object laid out by hand per docs/repository-format.md, version 1."""
    return struct.pack("<4sBBHII", b"HSCK", 1, method, 0, len(plaintext), len(payload)) + payload


def test_version_1_objects_from_explicit_bytes() -> None:
    codec = Codec(hash_name="sha256")  # what every version 1 repository uses
    text = b"version one " * 500
    stored = _v1_object(0, text, text)
    assert codec.open(stored, codec.chunk_id(text)) == text
    assert codec.reusable(stored, codec.chunk_id(text))
    # a v1 object has no CRC: a damaged one is found by decoding it, also before reuse
    damaged = stored[:-1] + b"X"
    assert not codec.reusable(damaged, codec.chunk_id(text))
    with pytest.raises(IntegrityError, match="does not match its hash"):
        codec.open(damaged, codec.chunk_id(text))
    assert not codec.reusable(_v1_object(0, text, b""), codec.chunk_id(text))
    # zlib is no compression of ours: method 3 is refused
    with pytest.raises(IntegrityError, match="corrupt header"):
        codec.open(_v1_object(3, text, zlib.compress(text)), codec.chunk_id(text))
