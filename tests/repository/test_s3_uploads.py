"""Chunk uploads to S3: in parallel, with bounded bytes in flight, and a failed upload
fails the export (never a generation that names a missing chunk)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import hypersdk.repository.storage.s3 as s3
from hypersdk.errors import RepositoryError
from hypersdk.repository.repository import Repository
from hypersdk.repository.verify import select, verify
from tests.chain import BS, export, restored_bytes
from tests.rigs.s3 import s3_env, s3_server, s3_url

__all__ = ["s3_env", "s3_server", "s3_url"]  # fixtures


def test_uploads_run_in_parallel_within_the_byte_bound(
    s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repository.open_or_init(s3_url, block_size=BS, compression="none")
    img = tmp_path / "disk.raw"
    img.write_bytes(os.urandom(48 * BS))
    limit = 4 * (BS + 64)  # four sealed chunks
    monkeypatch.setattr(s3, "UPLOAD_BYTES", limit)
    lock = threading.Lock()
    flight = {"n": 0, "bytes": 0, "max_n": 0, "max_bytes": 0}
    real = s3.S3Storage.put_chunk

    def watched(self: s3.S3Storage, key: str, data: bytes) -> None:
        with lock:
            flight["n"] += 1
            flight["bytes"] += len(data)
            flight["max_n"] = max(flight["max_n"], flight["n"])
            flight["max_bytes"] = max(flight["max_bytes"], flight["bytes"])
        try:
            time.sleep(0.02)  # a slower network: uploads overlap
            real(self, key, data)
        finally:
            with lock:
                flight["n"] -= 1
                flight["bytes"] -= len(data)

    monkeypatch.setattr(s3.S3Storage, "put_chunk", watched)
    gen = export(repo, {"disk-0": img}, parallel=4)
    assert flight["max_n"] > 1, "chunks were uploaded one at a time"
    assert flight["max_bytes"] <= limit
    assert restored_bytes(repo, gen.manifest, "disk-0", tmp_path) == img.read_bytes()


def test_a_failed_upload_fails_the_export_and_commits_nothing(
    s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repository.open_or_init(s3_url, block_size=BS)
    img = tmp_path / "disk.raw"
    img.write_bytes(os.urandom(8 * BS))
    first = export(repo, {"disk-0": img})
    img.write_bytes(os.urandom(8 * BS))
    calls = {"n": 0}
    real = s3.S3Storage.put_chunk

    def flaky(self: s3.S3Storage, key: str, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise RepositoryError(f"{self.location}/{key}: 503 Slow Down (after retries)")
        real(self, key, data)

    monkeypatch.setattr(s3.S3Storage, "put_chunk", flaky)
    with pytest.raises(RepositoryError, match="503 Slow Down"):
        export(repo, {"disk-0": img}, parent=first.manifest)
    assert [m.id for m in repo.generations("vm1")] == [first.manifest.id]
    assert verify(repo, select(repo, None, None)).ok
