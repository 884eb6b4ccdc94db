"""A sealed object that was edited, swapped or moved is an IntegrityError, and verify
finds it: chunks are bound to their names, manifests and indexes to their paths, index
segments to their number and to being the last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hypersdk.errors import IntegrityError, PasswordError
from hypersdk.repository import crypto
from hypersdk.repository.envelope import MAGIC, chunk_id
from hypersdk.repository.keys import Password
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import restore_disk
from tests.chain import BS, export, restored_bytes

PASSWORD = "s3cret"


@pytest.fixture(autouse=True)
def _cheap_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERSDK_INSECURE_KDF", "1")
    monkeypatch.delenv("HYPERSDK_PASSWORD", raising=False)


def new_repo(root: Path) -> Repository:
    return Repository.open_or_init(
        root, block_size=BS, password=Password(value=PASSWORD), encrypt=True
    )


@pytest.fixture()
def two(tmp_path: Path) -> tuple[Repository, bytes]:
    repo = new_repo(tmp_path / "repo")
    img = tmp_path / "disk.raw"
    data = os.urandom(6 * BS)
    img.write_bytes(data)
    full = export(repo, {"disk-0": img})
    export(repo, {"disk-0": img}, changed={"disk-0": []}, parent=full.manifest)
    return repo, data


def verify(root: Path) -> tuple[int, dict[str, object]]:
    proc = subprocess.run(
        [sys.executable, "-m", "hypersdk.cli.hyperctl", "verify", "--output", str(root),
         "--json"],
        capture_output=True, text=True, check=False,
        env={**os.environ, "HYPERSDK_PASSWORD": PASSWORD},
    )  # fmt: skip
    assert "Traceback" not in proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_chunks_are_named_by_a_keyed_hash_and_sealed(two: tuple[Repository, bytes]) -> None:
    repo, data = two
    index = repo.load_index(repo.generations("vm1")[0], "disk-0")
    block, cid = next(index.chunks())
    plain = data[block * BS : (block + 1) * BS]
    assert cid not in (chunk_id(plain, "blake3"), chunk_id(plain, "sha256"))  # not unkeyed
    assert cid == repo.codec.chunk_id(plain)
    blob = repo.layout.chunk(cid).read_bytes()
    assert blob[:4] == b"HSCE" and blob[:4] != MAGIC
    assert plain[:64] not in blob
    # Another repository (another master key) names the same block differently.
    other = new_repo(repo.root.parent / "other")
    assert other.codec.chunk_id(plain) != cid
    # The right password opens it again; a wrong or missing one is a PasswordError.
    again = Repository.open(repo.root, password=Password(value=PASSWORD))
    assert restored_bytes(again, again.generations("vm1")[-1], "disk-0", repo.root.parent) == data
    with pytest.raises(PasswordError, match="wrong password"):
        Repository.open(repo.root, password=Password(value="nope"))
    with pytest.raises(PasswordError, match="is encrypted"):
        Repository.open(repo.root)


def test_swapped_chunks_are_found(two: tuple[Repository, bytes]) -> None:
    repo, _ = two
    index = repo.load_index(repo.generations("vm1")[0], "disk-0")
    (_, a), (_, b) = list(index.chunks())[:2]
    pa, pb = repo.layout.chunk(a), repo.layout.chunk(b)
    blob_a, blob_b = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(blob_b)  # valid sealed chunks, each under the other's name
    pb.write_bytes(blob_a)
    code, report = verify(repo.root)
    assert code == 1
    bad = {d["chunk"] for d in report["damage"]}  # type: ignore[attr-defined]
    assert bad == {a.hex(), b.hex()}
    assert not repo.codec.reusable(blob_b, a)  # and an export would write it again
    with pytest.raises(IntegrityError, match="authentication"):
        restore_disk(repo, repo.generations("vm1")[0], "disk-0", repo.root.parent / "o.raw")


def test_edited_chunk_is_found(two: tuple[Repository, bytes]) -> None:
    repo, _ = two
    index = repo.load_index(repo.generations("vm1")[0], "disk-0")
    _, cid = next(index.chunks())
    path = repo.layout.chunk(cid)
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    code, report = verify(repo.root)
    assert code == 1 and cid.hex() in json.dumps(report)


def test_edited_or_moved_manifest_is_found(two: tuple[Repository, bytes]) -> None:
    repo, _ = two
    first, second = repo.generations("vm1")
    p1 = repo.layout.manifest("vm1", first.id)
    p2 = repo.layout.manifest("vm1", second.id)
    assert p1.read_bytes()[:4] == b"HSSO" and b"vm1" not in p1.read_bytes()
    p2.write_bytes(p1.read_bytes())  # a valid sealed manifest under another name
    code, report = verify(repo.root)
    assert code == 1
    assert [d["generation"] for d in report["damage"]] == [second.id]  # type: ignore[index]
    assert "authentication" in json.dumps(report)
    blob = bytearray(p1.read_bytes())
    blob[20] ^= 0x01
    p1.write_bytes(bytes(blob))
    code, report = verify(repo.root)
    assert code == 1 and len(report["damage"]) == 2  # type: ignore[arg-type]


def test_edited_or_swapped_index_is_found(two: tuple[Repository, bytes]) -> None:
    repo, _ = two
    first, second = repo.generations("vm1")
    i1 = repo.root / first.disks[0].index
    i2 = repo.root / second.disks[0].index
    assert i1.read_bytes()[:4] == b"HSSS"
    i2.write_bytes(i1.read_bytes())  # same content, but sealed for the other path
    code, report = verify(repo.root)
    assert code == 1
    assert [d["generation"] for d in report["damage"]] == [second.id]  # type: ignore[index]
    with pytest.raises(IntegrityError, match="authentication"):
        repo.load_index(second, "disk-0")
    blob = bytearray(i1.read_bytes())
    blob[40] ^= 0x80
    i1.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="authentication"):
        repo.load_index(first, "disk-0")


# -- the segmented seal, on its own: several segments without a 2 GiB disk ---------------


def sealed_stream(tmp_path: Path, data: bytes, name: str = "vms/v/indexes/g/d.idx") -> Path:
    keys = crypto.RepositoryKeys.from_master(b"k" * 32)
    path = tmp_path / "s"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        w = crypto.StreamWriter(keys, crypto.KIND_INDEX, name, fd)
        w.pwrite(data[:100], 0)
        w.pwrite(data[3 * crypto.SEGMENT_BYTES // 2 :], 3 * crypto.SEGMENT_BYTES // 2)  # gap
        w.finish(len(data))
    finally:
        os.close(fd)
    return path


def read_stream(path: Path, name: str = "vms/v/indexes/g/d.idx") -> bytes:
    keys = crypto.RepositoryKeys.from_master(b"k" * 32)
    fd = os.open(path, os.O_RDONLY)
    try:
        r = crypto.StreamReader(keys, crypto.KIND_INDEX, name, fd, "idx")
        buf = bytearray(r.size)
        assert r.readinto(memoryview(buf), 0) == r.size
        return bytes(buf)
    finally:
        os.close(fd)


def test_segmented_seal_round_trip_and_gaps(tmp_path: Path) -> None:
    seg = crypto.SEGMENT_BYTES
    data = os.urandom(3 * seg + 12345)
    path = sealed_stream(tmp_path, data)
    assert path.stat().st_size == crypto.sealed_size(len(data))
    expected = data[:100] + bytes(3 * seg // 2 - 100) + data[3 * seg // 2 :]
    assert read_stream(path) == expected
    with pytest.raises(IntegrityError):
        read_stream(path, name="vms/v/indexes/OTHER/d.idx")
    # An exact multiple of the segment size still ends with a (short, empty) last segment.
    exact = os.urandom(2 * seg)
    path = sealed_stream(tmp_path, exact)
    assert path.stat().st_size == crypto.sealed_size(2 * seg)
    assert read_stream(path) == exact[:100] + bytes(3 * seg // 2 - 100) + exact[3 * seg // 2 :]


def test_segmented_seal_refuses_cut_or_reordered_segments(tmp_path: Path) -> None:
    seg = crypto.SEGMENT_BYTES
    data = os.urandom(3 * seg + 999)
    path = sealed_stream(tmp_path, data)
    blob = path.read_bytes()
    head = crypto.STREAM_HEADER.size
    size = seg + crypto.OVERHEAD
    segments = [blob[head + i * size : head + (i + 1) * size] for i in range(4)]
    cut = blob[: head + 3 * size]  # the last segment dropped: segment 2 is not "last"
    swapped = blob[:head] + segments[1] + segments[0] + b"".join(segments[2:])
    for bad in (cut, swapped, blob[:-1], blob[: head + 5]):
        path.write_bytes(bad)
        with pytest.raises(IntegrityError):
            read_stream(path)


def test_delete_and_gc_keep_the_rest_restorable(
    two: tuple[Repository, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, data = two
    first, second = repo.generations("vm1")
    monkeypatch.setenv("HYPERSDK_PASSWORD", PASSWORD)
    for argv in (
        ["delete", "--output", str(repo.root), "--vm", "vm1", "--generation", first.id],
        ["gc", "--output", str(repo.root)],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "hypersdk.cli.hyperctl", *argv, "--json"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    assert [m.id for m in repo.generations("vm1")] == [second.id]
    assert len(os.listdir(repo.root / "keys")) == 1  # gc leaves the key files alone
    assert verify(repo.root)[0] == 0
    assert restored_bytes(repo, second, "disk-0", repo.root.parent) == data


def test_a_config_edited_to_plain_or_lost_keys_are_refused(two: tuple[Repository, bytes]) -> None:
    repo, _ = two
    config = repo.root / "config"
    doc = json.loads(config.read_text())
    plain = {**doc, "version": 2, "hash": "sha256"}
    del plain["encryption"]
    config.write_text(json.dumps(plain))
    # An export into it would otherwise write plaintext beside the sealed data.
    with pytest.raises(IntegrityError, match="key files"):
        Repository.open_or_init(repo.root, block_size=BS)
    config.write_text(json.dumps({**doc, "version": 2}))  # encryption without version 3
    with pytest.raises(IntegrityError, match="do not match"):
        Repository.open(repo.root)
    config.write_text(json.dumps(doc))
    for key in (repo.root / "keys").iterdir():
        key.unlink()
    with pytest.raises(IntegrityError, match="no key files"):
        Repository.open(repo.root, password=Password(value=PASSWORD))
