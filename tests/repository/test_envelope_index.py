import os

import pytest

from hypersdk.errors import IntegrityError
from hypersdk.repository.envelope import HEADER, PLAIN_HASHES, Codec, Compression, chunk_id
from hypersdk.repository.index import DiskIndex

COMPRESSIBLE = b"hello world, " * 10000
RANDOM = os.urandom(100_000)


@pytest.mark.parametrize("hash_name", PLAIN_HASHES)
@pytest.mark.parametrize("method", list(Compression))
@pytest.mark.parametrize("data", [COMPRESSIBLE, RANDOM, b"x"])
def test_seal_open_round_trip(method: Compression, data: bytes, hash_name: str) -> None:
    codec = Codec(method, 1, hash_name)
    sealed = codec.seal(data)
    assert sealed[:4] == b"HSCK"
    assert codec.chunk_id(data) == chunk_id(data, hash_name)
    assert codec.open(sealed, chunk_id(data, hash_name)) == data
    # any codec of the same hash opens any object: the header says how it was stored
    assert Codec(Compression.NONE, 1, hash_name).open(sealed, codec.chunk_id(data)) == data


def test_the_two_hashes_name_chunks_apart() -> None:
    """A repository's hash is part of every chunk's name: a chunk named by one hash is
    refused by a codec of the other (a tool that mixed them would see damage, never a
    wrong block)."""
    blake, sha = Codec(hash_name="blake3"), Codec(hash_name="sha256")
    assert blake.chunk_id(COMPRESSIBLE) != sha.chunk_id(COMPRESSIBLE)
    assert sha.chunk_id(b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert blake.chunk_id(b"abc").hex() == (
        "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
    )
    with pytest.raises(IntegrityError, match="does not match its hash"):
        sha.open(blake.seal(COMPRESSIBLE), blake.chunk_id(COMPRESSIBLE))


def test_compression_shrinks_and_random_data_falls_back_to_none() -> None:
    codec = Codec(Compression.ZSTD, 1)
    assert len(codec.seal(COMPRESSIBLE)) < len(COMPRESSIBLE) // 10
    sealed = codec.seal(RANDOM)
    assert sealed[5] == Compression.NONE
    assert len(sealed) == len(RANDOM) + HEADER.size


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"XXXX" + b[4:], "bad magic"),
        (lambda b: b[:4] + b"\x09" + b[5:], "unsupported object version"),
        (lambda b: b[:-1], "payload is"),
        # v2: the CRC32C finds a flipped bit before anything is decompressed, in the
        # payload, in the plaintext length, in the compression byte and in the CRC itself
        (lambda b: b[:40] + bytes([b[40] ^ 0x01]) + b[41:], "checksum mismatch"),
        (lambda b: b[:8] + bytes([b[8] ^ 0x01]) + b[9:], "checksum mismatch"),
        (lambda b: b[:5] + bytes([2]) + b[6:], "checksum mismatch"),
        (lambda b: b[:17] + bytes([b[17] ^ 0x80]) + b[18:], "checksum mismatch"),
        (lambda b: b[:10], "truncated"),
        (lambda b: b[:18], "truncated"),
    ],
)
def test_damaged_objects_are_refused(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    codec = Codec(Compression.ZSTD, 1)
    sealed = codec.seal(COMPRESSIBLE)
    with pytest.raises(IntegrityError, match=message):
        codec.open(mutate(sealed), codec.chunk_id(COMPRESSIBLE))


def test_wrong_id_is_refused() -> None:
    codec = Codec()
    with pytest.raises(IntegrityError, match="does not match its hash"):
        codec.open(codec.seal(b"abc"), codec.chunk_id(b"abd"))


def test_index_round_trip_and_damage() -> None:
    index = DiskIndex.empty(5 * 65536 + 100, 65536)
    assert index.blocks == 6
    assert index.block_length(5) == 100
    index.set(2, chunk_id(b"a", "blake3"))
    blob = index.encode()
    back = DiskIndex.decode(blob)
    assert back.get(2) == chunk_id(b"a", "blake3") and back.get(1) is None
    assert back.zero_blocks() == 5
    with pytest.raises(IntegrityError, match="truncated"):
        DiskIndex.decode(blob[:-7])
    flipped = bytearray(blob)
    flipped[40] ^= 0xFF
    with pytest.raises(IntegrityError, match="checksum"):
        DiskIndex.decode(bytes(flipped))
    with pytest.raises(IntegrityError, match="magic"):
        DiskIndex.decode(b"NOPE" + blob[4:])
