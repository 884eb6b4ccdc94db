"""Repositories on S3 (issue 10): exports, restores, verify, gc and locks against a real
S3 API server (moto's server mode on loopback)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from hypersdk.errors import HyperSDKError, LockedError, NotFoundError, RepositoryError
from hypersdk.providers.base import Extent
from hypersdk.repository.gc import collect_garbage
from hypersdk.repository.layout import Keys
from hypersdk.repository.repository import Repository
from hypersdk.repository.storage.s3 import S3Storage
from hypersdk.repository.verify import select, verify
from tests.chain import BS, export, restored_bytes
from tests.rigs.s3 import S3Server, s3_env, s3_server, s3_url

__all__ = ["s3_env", "s3_server", "s3_url"]  # fixtures


def test_full_and_incremental_exports_restore_byte_identical(s3_url: str, tmp_path: Path) -> None:
    repo = Repository.open_or_init(s3_url, block_size=BS)
    img = tmp_path / "disk.raw"
    data = bytearray(os.urandom(40 * BS))
    data[10 * BS : 20 * BS] = bytes(10 * BS)  # zero blocks are never stored
    img.write_bytes(data)
    first = export(repo, {"disk-0": img})
    assert first.disks["disk-0"].zero_blocks == 10

    data[3 * BS : 5 * BS] = os.urandom(2 * BS)
    img.write_bytes(data)
    second = export(
        repo, {"disk-0": img}, changed={"disk-0": [Extent(3 * BS, 2 * BS)]}, parent=first.manifest
    )
    assert second.manifest.type == "incremental"
    assert second.disks["disk-0"].chunks_new == 2

    again = Repository.open(s3_url)  # a new process's view: everything is in the bucket
    assert [m.id for m in again.generations("vm1")] == [first.manifest.id, second.manifest.id]
    first_bytes = restored_bytes(again, first.manifest, "disk-0", tmp_path)
    assert restored_bytes(again, second.manifest, "disk-0", tmp_path) == bytes(data)
    assert first_bytes != bytes(data) and len(first_bytes) == len(data)
    report = verify(again, select(again, None, None))
    assert report.ok and report.generations == 2 and report.chunks_checked == 32


def test_verify_finds_a_damaged_object_and_gc_removes_only_garbage(
    s3_url: str, tmp_path: Path
) -> None:
    repo = Repository.open_or_init(s3_url, block_size=BS)
    store = repo.storage
    assert isinstance(store, S3Storage)
    img = tmp_path / "disk.raw"
    img.write_bytes(os.urandom(6 * BS))
    gen = export(repo, {"disk-0": img}).manifest
    # Garbage an interrupted export leaves: an unreferenced chunk and an index folder.
    store.put_chunk(Keys.chunk(b"\x11" * 32), b"orphan")
    store.put_atomic(Keys.index("vm1", "20990101T000000Z-dead", "disk-0"), b"x")
    report = collect_garbage(repo)
    assert (report.chunks_removed, report.indexes_removed, report.chunks_kept) == (1, 1, 6)
    assert restored_bytes(repo, gen, "disk-0", tmp_path) == img.read_bytes()

    cid = next(repo.load_index(gen, "disk-0").chunks())[1]
    store.put_chunk(Keys.chunk(cid), b"rotten")
    damage = verify(repo, select(repo, None, None)).damage
    assert [d.chunk for d in damage] == [cid.hex()]


def test_a_held_writer_lock_is_an_immediate_error_naming_its_holder(
    s3_url: str, tmp_path: Path
) -> None:
    repo = Repository.open_or_init(s3_url, block_size=BS)
    img = tmp_path / "disk.raw"
    img.write_bytes(os.urandom(2 * BS))
    other = Repository.open(s3_url)
    t0 = time.monotonic()
    with other.writer("vm1"), pytest.raises(LockedError, match=f"pid {os.getpid()} on "):
        export(repo, {"disk-0": img})
    assert time.monotonic() - t0 < 5
    with repo.writer("vm1"), pytest.raises(LockedError, match="an export, restore or verify"):
        collect_garbage(other)
    with repo.exclusive(), pytest.raises(LockedError, match="gc is running"):
        export(other, {"disk-0": img})
    export(repo, {"disk-0": img})  # every lock was released


def _lease(expires: float) -> bytes:
    return json.dumps(
        {"pid": 4242, "host": "elsewhere", "since": "2026-01-01T00:00:00Z", "expires": expires}
    ).encode()


def test_a_dead_writers_expired_lease_is_taken_over(s3_url: str, tmp_path: Path) -> None:
    repo = Repository.open_or_init(s3_url, block_size=BS)
    img = tmp_path / "disk.raw"
    img.write_bytes(os.urandom(2 * BS))
    repo.storage.put_atomic(Keys.vm_lock("vm1"), _lease(time.time() + 60))
    with pytest.raises(LockedError, match="pid 4242 on elsewhere since 2026-01-01T00:00:00Z"):
        export(repo, {"disk-0": img})
    repo.storage.put_atomic(Keys.vm_lock("vm1"), _lease(time.time() - 1))
    with repo.writer("vm1") as stale:
        assert stale["pid"] == 4242 and stale["host"] == "elsewhere"
    export(repo, {"disk-0": img})
    # a live shared lease of a dead reader blocks gc until it expires
    repo.storage.put_atomic(f"{Keys.repository_lock}/shared-x", _lease(time.time() + 60))
    with pytest.raises(LockedError, match="pid 4242"):
        collect_garbage(repo)
    repo.storage.put_atomic(f"{Keys.repository_lock}/shared-x", _lease(time.time() - 1))
    collect_garbage(repo)


def test_a_lease_is_renewed_while_held_and_a_lost_lease_stops_the_commit(
    s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYPERSDK_LOCK_LEASE_S", "1.5")
    repo = Repository.open_or_init(s3_url, block_size=BS)
    img = tmp_path / "disk.raw"
    img.write_bytes(os.urandom(2 * BS))
    with repo.writer("vm1"):
        time.sleep(2.5)  # longer than the lease: only renewal keeps it
        other = Repository.open(s3_url)
        with pytest.raises(LockedError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
            export(other, {"disk-0": img})
        # another process takes the lock over (as if this holder had hung past expiry)
        repo.storage.put_atomic(Keys.vm_lock("vm1"), _lease(time.time() + 60))
        time.sleep(1.0)
        with pytest.raises(LockedError, match="was lost"):
            repo.storage.put_atomic(Keys.manifest("vm1", "x"), b"{}")


def test_missing_bucket_and_credentials_are_one_line_naming_the_url(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(NotFoundError) as exc:
        Repository.open("s3://no-such-bucket-here/r")
    assert "s3://no-such-bucket-here/r" in str(exc.value) and "\n" not in str(exc.value)
    bucket = s3_env.bucket()
    with pytest.raises(NotFoundError, match=f"s3://{bucket}/none is not a HyperSDK repository"):
        Repository.open(f"s3://{bucket}/none")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    with pytest.raises(RepositoryError, match=f"s3://{bucket}/r: no S3 credentials"):
        Repository.open(f"s3://{bucket}/r")
    for bad in ("s3://b/../x", "s3://Bad_Bucket/x", "s3://bucket1//x"):
        with pytest.raises(HyperSDKError):
            Repository.open(bad)


def test_credentials_come_from_a_profile(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    creds = tmp_path / "credentials"
    creds.write_text("[backup]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    conf = tmp_path / "config"
    conf.write_text(f"[profile backup]\nregion = us-east-1\nendpoint_url = {s3_env.endpoint}\n")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(conf))
    monkeypatch.setenv("AWS_PROFILE", "backup")
    url = f"s3://{s3_env.bucket()}/p"
    repo = Repository.open_or_init(url, block_size=BS)
    assert Repository.open(url).config.id == repo.config.id
    monkeypatch.setenv("AWS_PROFILE", "nobody")
    with pytest.raises(RepositoryError, match="no AWS profile 'nobody'"):
        Repository.open(url)
