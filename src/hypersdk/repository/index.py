"""A disk index: which chunk holds each block of one disk in one generation.

File layout (little endian):

    offset  size          field
    0       4             magic b"HSIX"
    4       1             format version (1)
    5       1             hash algorithm: 1 = SHA-256
    6       2             reserved, must be 0
    8       4             block size in bytes (power of two)
    12      4             reserved, must be 0
    16      8             disk capacity in bytes
    24      8             block count = ceil(capacity / block size)
    32      32 * count    one entry per block: the chunk id, or 32 zero bytes for a zero block
    end-32  32            SHA-256 of every byte before it

An index always describes the whole disk: an incremental index is its parent's with the
changed blocks replaced, so any generation restores without its ancestors.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from hypersdk.errors import IntegrityError

MAGIC = b"HSIX"
VERSION = 1
HASH_SHA256 = 1
HEADER = struct.Struct("<4sBBHIIQQ")
ENTRY = 32
ZERO_ENTRY = bytes(ENTRY)


def block_count(capacity: int, block_size: int) -> int:
    return -(-capacity // block_size)


@dataclass
class DiskIndex:
    capacity: int
    block_size: int
    entries: bytearray

    @classmethod
    def empty(cls, capacity: int, block_size: int) -> DiskIndex:
        """An index in which every block is zero."""
        return cls(capacity, block_size, bytearray(block_count(capacity, block_size) * ENTRY))

    @property
    def blocks(self) -> int:
        return len(self.entries) // ENTRY

    def block_length(self, block: int) -> int:
        return min(self.block_size, self.capacity - block * self.block_size)

    def get(self, block: int) -> bytes | None:
        """The chunk id of ``block``, or None when the block is zero."""
        raw = bytes(self.entries[block * ENTRY : (block + 1) * ENTRY])
        return None if raw == ZERO_ENTRY else raw

    def set(self, block: int, chunk: bytes | None) -> None:
        self.entries[block * ENTRY : (block + 1) * ENTRY] = chunk if chunk else ZERO_ENTRY

    def copy(self) -> DiskIndex:
        return DiskIndex(self.capacity, self.block_size, bytearray(self.entries))

    def chunks(self) -> Iterator[tuple[int, bytes]]:
        """(block, chunk id) for every non-zero block, in disk order."""
        view = memoryview(self.entries)
        for block in range(self.blocks):
            raw = view[block * ENTRY : (block + 1) * ENTRY]
            if raw != ZERO_ENTRY:
                yield block, bytes(raw)

    def zero_blocks(self) -> int:
        return sum(1 for b in range(self.blocks) if self.get(b) is None)

    def encode(self) -> bytes:
        header = HEADER.pack(
            MAGIC, VERSION, HASH_SHA256, 0, self.block_size, 0, self.capacity, self.blocks
        )
        body = header + bytes(self.entries)
        return body + hashlib.sha256(body).digest()

    @classmethod
    def decode(cls, blob: bytes, where: str = "index") -> DiskIndex:
        if len(blob) < HEADER.size + 32:
            raise IntegrityError(f"{where}: truncated ({len(blob)} bytes)")
        magic, version, algo, res1, block_size, res2, capacity, count = HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise IntegrityError(f"{where}: bad magic {magic!r}")
        if version != VERSION:
            raise IntegrityError(f"{where}: unsupported index version {version}")
        if algo != HASH_SHA256 or res1 or res2:
            raise IntegrityError(f"{where}: corrupt header")
        if block_size <= 0 or block_size & (block_size - 1):
            raise IntegrityError(f"{where}: block size {block_size} is not a power of two")
        if count != block_count(capacity, block_size):
            raise IntegrityError(f"{where}: block count does not match the capacity")
        expected = HEADER.size + count * ENTRY + 32
        if len(blob) != expected:
            raise IntegrityError(f"{where}: truncated ({len(blob)} of {expected} bytes)")
        if hashlib.sha256(blob[:-32]).digest() != blob[-32:]:
            raise IntegrityError(f"{where}: checksum mismatch")
        return cls(capacity, block_size, bytearray(blob[HEADER.size : -32]))
