"""The raw restore decodes chunks into reused per-thread buffers (``read_chunk_into``,
``Codec.open_into``): the result stays byte-exact, and a chunk that is wrong in any way,
even one forged with a consistent envelope (header and CRC), still fails the restore with
IntegrityError and leaves no output behind."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import google_crc32c
import lz4.block
import pytest
import zstandard

from hypersdk.errors import IntegrityError
from hypersdk.repository.envelope import HEADER_V1, MAGIC, VERSION, Codec, Compression
from hypersdk.repository.keys import Password
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import ChunkBuffers, read_chunk, read_chunk_into, restore_disk
from hypersdk.repository.storage.local import LocalStorage
from tests.chain import BS, export

TEXT = bytes(b"etaoinshrdlucmfw"[i % 16] for i in range(256))


def mixed_image(path: Path, blocks: int = 12, seed: int = 7) -> bytes:
    """Compressible, random and zero blocks, and a short last block."""
    rng = random.Random(seed)
    parts = []
    for i in range(blocks):
        kind = i % 3
        if kind == 0:
            parts.append(rng.randbytes(BS).translate(TEXT))  # stored zstd
        elif kind == 1:
            parts.append(rng.randbytes(BS))  # stored as is
        else:
            parts.append(bytes(BS))  # a hole
    parts.append(rng.randbytes(BS // 2 + 512).translate(TEXT))
    data = b"".join(parts)
    path.write_bytes(data)
    return data


def envelope(method: Compression, plain_len: int, payload: bytes) -> bytes:
    """A version 2 object with a header and CRC that check out, whatever its payload."""
    head = HEADER_V1.pack(MAGIC, VERSION, method, 0, plain_len, len(payload))
    crc: int = google_crc32c.extend(google_crc32c.value(head), payload)
    return head + crc.to_bytes(4, "little") + payload


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((".out", "out")))


@pytest.fixture()
def repo_and_image(tmp_path: Path) -> tuple[Repository, bytes]:
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    data = mixed_image(tmp_path / "disk.raw")
    export(repo, {"disk-0": tmp_path / "disk.raw"})
    return repo, data


def test_restore_is_byte_exact_and_sparse(
    repo_and_image: tuple[Repository, bytes], tmp_path: Path
) -> None:
    repo, data = repo_and_image
    out = tmp_path / "out.raw"
    result = restore_disk(repo, repo.generation("vm1"), "disk-0", out, parallel=3)
    assert out.read_bytes() == data
    assert result.zero_blocks == 4
    assert os.stat(out).st_blocks * 512 < len(data)  # zero blocks stay holes


def _stored(repo: Repository, method: Compression) -> tuple[bytes, Path, bytes]:
    """(id, file, plaintext) of a stored chunk that uses ``method``."""
    index = repo.load_index(repo.generation("vm1"), "disk-0")
    for _, cid in index.chunks():
        path = repo.layout.chunk(cid)
        blob = path.read_bytes()
        if blob[5] == method:
            return cid, path, read_chunk(repo, cid, "test")
    raise AssertionError(f"no chunk stored with {method.name}")


zc = zstandard.ZstdCompressor(level=1)


# Each forgery keeps the envelope consistent (header and CRC recomputed): only the
# decoder's own checks and the hash can catch it.
FORGERIES: dict[str, tuple[Compression, Callable[[bytes], tuple[int, bytes]]]] = {
    "zstd of other bytes": (
        Compression.ZSTD,
        lambda p: (len(p), zc.compress(bytes([p[0] ^ 1]) + p[1:])),
    ),
    "zstd frame shorter than the header says": (
        Compression.ZSTD,
        lambda p: (len(p), zc.compress(p[:-100])),
    ),
    "zstd frame longer than the header says": (
        Compression.ZSTD,
        lambda p: (len(p), zc.compress(p + b"x")),
    ),
    "truncated zstd frame": (
        Compression.ZSTD,
        lambda p: (len(p), zc.compress(p)[:-5]),
    ),
    "not a zstd frame": (Compression.ZSTD, lambda p: (len(p), os.urandom(200))),
    "uncompressed, one byte changed": (
        Compression.NONE,
        lambda p: (len(p), p[:-1] + bytes([p[-1] ^ 0x80])),
    ),
    "uncompressed, shorter than the header says": (
        Compression.NONE,
        lambda p: (len(p), p[:-1]),
    ),
    "larger than any buffer": (
        Compression.NONE,
        lambda p: (len(p), p + os.urandom(4 * BS)),
    ),
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_a_forged_chunk_fails_the_restore_and_leaves_nothing(
    repo_and_image: tuple[Repository, bytes], tmp_path: Path, name: str
) -> None:
    repo, _ = repo_and_image
    method, forge = FORGERIES[name]
    cid, path, plain = _stored(repo, method)
    plain_len, payload = forge(plain)
    path.write_bytes(envelope(method, plain_len, payload))

    out = tmp_path / "out.raw"
    with pytest.raises(IntegrityError, match=cid.hex()):
        restore_disk(repo, repo.generation("vm1"), "disk-0", out, parallel=3)
    assert leftovers(tmp_path) == []  # neither the image nor its private work folder


def test_a_missing_chunk_fails_the_restore(
    repo_and_image: tuple[Repository, bytes], tmp_path: Path
) -> None:
    repo, _ = repo_and_image
    cid, path, _ = _stored(repo, Compression.ZSTD)
    path.unlink()
    with pytest.raises(IntegrityError, match=f"chunk {cid.hex()} is missing"):
        restore_disk(repo, repo.generation("vm1"), "disk-0", tmp_path / "out.raw")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("method", list(Compression))
def test_open_into_matches_open(method: Compression) -> None:
    codec = Codec(method)
    bufs = ChunkBuffers(BS)
    rng = random.Random(3)
    for plain in (rng.randbytes(BS).translate(TEXT), rng.randbytes(BS), b"abc" * 100):
        cid = codec.chunk_id(plain)
        blob = codec.seal(plain)
        n = len(blob)
        bufs.blob[:n] = blob
        # the same object as bytes and as a view of a reused buffer
        for given in (blob, memoryview(bufs.blob)[:n]):
            assert bytes(codec.open_into(given, cid, bufs.out)) == codec.open(blob, cid) == plain


def test_open_into_reads_version_1_objects() -> None:
    plain = random.Random(4).randbytes(BS).translate(TEXT)
    for method, payload in (
        (Compression.ZSTD, zc.compress(plain)),
        (Compression.LZ4, lz4.block.compress(plain, store_size=False)),
        (Compression.NONE, plain),
    ):
        blob = HEADER_V1.pack(MAGIC, 1, method, 0, len(plain), len(payload)) + payload
        out = bytearray(BS)
        assert bytes(Codec().open_into(blob, Codec().chunk_id(plain), out)) == plain


def test_get_into_reads_into_the_buffer_or_returns_bytes(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    (tmp_path / "small").write_bytes(b"x" * 100)
    (tmp_path / "large").write_bytes(b"y" * 300)
    buf = bytearray(200)
    small = storage.get_into("small", buf)
    assert isinstance(small, memoryview) and small.obj is buf and bytes(small) == b"x" * 100
    assert storage.get_into("large", buf) == b"y" * 300
    with pytest.raises(FileNotFoundError):
        storage.get_into("absent", buf)


def test_encrypted_repository_restores_exactly_and_refuses_a_damaged_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYPERSDK_INSECURE_KDF", "1")  # scrypt at ~1 ms: tests only
    password = Password(value="correct horse battery staple")
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS, password=password)
    data = mixed_image(tmp_path / "disk.raw")
    export(repo, {"disk-0": tmp_path / "disk.raw"})
    repo = Repository.open(tmp_path / "repo", password=password)
    manifest = repo.generation("vm1")

    out = tmp_path / "out.raw"
    restore_disk(repo, manifest, "disk-0", out, parallel=3)
    assert out.read_bytes() == data
    out.unlink()

    index = repo.load_index(manifest, "disk-0")
    _, cid = next(iter(index.chunks()))
    bufs = ChunkBuffers(BS)
    assert bytes(read_chunk_into(repo, cid, "test", bufs)) == data[:BS]
    path = repo.layout.chunk(cid)
    blob = bytearray(path.read_bytes())
    blob[-20] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="fails its authentication"):
        restore_disk(repo, manifest, "disk-0", out, parallel=3)
    assert leftovers(tmp_path) == []
