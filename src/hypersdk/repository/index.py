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
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hypersdk.errors import IntegrityError
from hypersdk.repository.files import FILE_MODE

MAGIC = b"HSIX"
VERSION = 1
HASH_SHA256 = 1
HEADER = struct.Struct("<4sBBHIIQQ")
ENTRY = 32
ZERO_ENTRY = bytes(ENTRY)


def block_count(capacity: int, block_size: int) -> int:
    return -(-capacity // block_size)


# Scan granularity of ``nonzero_blocks``: a run of zero entries this long is skipped with
# one memcmp, so a sparse disk's index is walked at memory speed, not block by block.
_WINDOW = 4096  # entries: 128 KiB
_SUB = 64  # entries: 2 KiB
_ZERO_WINDOW = bytes(_WINDOW * ENTRY)
# Pieces of zero entries written at a time by ``set_zero``: bounded memory for any range.
_ZERO_PIECE = 32768


@dataclass
class DiskIndex:
    """The entries of one index in a single buffer (32 bytes a block, as on disk): no
    Python object per block, and every scan over it runs in C."""

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

    def set_zero(self, first: int, end: int) -> None:
        """Mark blocks ``[first, end)`` zero, in bounded pieces."""
        while first < end:
            n = min(end - first, _ZERO_PIECE)
            self.entries[first * ENTRY : (first + n) * ENTRY] = bytes(n * ENTRY)
            first += n

    def copy(self) -> DiskIndex:
        return DiskIndex(self.capacity, self.block_size, bytearray(self.entries))

    def nonzero_blocks(self) -> Iterator[int]:
        """Every block with a chunk, in disk order. Zero entries are skipped a window at
        a time with one comparison, so the cost follows the data, not the disk size."""
        buf = self.entries
        nblocks = self.blocks
        for w in range(0, nblocks, _WINDOW):
            w_end = min(w + _WINDOW, nblocks)
            if buf[w * ENTRY : w_end * ENTRY] == _ZERO_WINDOW[: (w_end - w) * ENTRY]:
                continue
            for s in range(w, w_end, _SUB):
                s_end = min(s + _SUB, w_end)
                if buf[s * ENTRY : s_end * ENTRY] == _ZERO_WINDOW[: (s_end - s) * ENTRY]:
                    continue
                for block in range(s, s_end):
                    if buf[block * ENTRY : (block + 1) * ENTRY] != ZERO_ENTRY:
                        yield block

    def chunks(self) -> Iterator[tuple[int, bytes]]:
        """(block, chunk id) for every non-zero block, in disk order."""
        buf = self.entries
        for block in self.nonzero_blocks():
            yield block, bytes(buf[block * ENTRY : (block + 1) * ENTRY])

    def zero_blocks(self) -> int:
        return self.blocks - sum(1 for _ in self.nonzero_blocks())

    def _header(self) -> bytes:
        return HEADER.pack(
            MAGIC, VERSION, HASH_SHA256, 0, self.block_size, 0, self.capacity, self.blocks
        )

    def encode(self) -> bytes:
        body = self._header() + bytes(self.entries)
        return body + hashlib.sha256(body).digest()

    def write(self, path: Path) -> str:
        """Create ``path`` (which must not exist, mode 0600) with the encoded index,
        without building the file in memory; returns the file's SHA-256 (hex). The
        caller makes it durable."""
        header = self._header()
        h = hashlib.sha256(header)
        h.update(self.entries)
        trailer = h.digest()
        h = hashlib.sha256(header)  # the file's digest covers the trailer too
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # whatever the umask
            view = memoryview(self.entries)
            _write_all(fd, header)
            # Hash the file in pieces as it is written: the entries are read from memory
            # once more while still in the CPU cache.
            for start in range(0, len(view), _IO_PIECE):
                piece = view[start : start + _IO_PIECE]
                h.update(piece)
                _write_all(fd, piece)
            h.update(trailer)
            _write_all(fd, trailer)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return h.hexdigest()

    @classmethod
    def read(cls, path: Path, expected_sha256: str, where: str = "index") -> DiskIndex:
        """Read and check an index file: its SHA-256 must be ``expected_sha256`` (the
        manifest's), then every check of ``decode``. The file is read into one buffer
        that becomes the entries (no copy); it is hashed once for both checksums."""
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            buf = bytearray(size)
            view = memoryview(buf)
            got = 0
            while got < size:
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n
            view.release()
        if got != size:
            raise IntegrityError(f"{where}: changed while it was read")
        h = hashlib.sha256()
        body_end = max(size - 32, 0)
        with memoryview(buf) as view:
            for start in range(0, body_end, _IO_PIECE):
                h.update(view[start : min(start + _IO_PIECE, body_end)])
            body_digest = h.digest()
            h.update(view[body_end:])
        if h.hexdigest() != expected_sha256:
            raise IntegrityError(f"{where}: does not match the checksum in the manifest")
        capacity, block_size = cls._check(buf, where, body_digest)
        # Both deletions are O(1) on a bytearray: the tail shrinks in place, the head
        # moves the buffer's start.
        del buf[-32:]
        del buf[: HEADER.size]
        return cls(capacity, block_size, buf)

    @classmethod
    def decode(cls, blob: bytes, where: str = "index") -> DiskIndex:
        capacity, block_size = cls._check(blob, where, hashlib.sha256(blob[:-32]).digest())
        return cls(capacity, block_size, bytearray(blob[HEADER.size : -32]))

    @staticmethod
    def _check(blob: bytes | bytearray, where: str, body_digest: bytes) -> tuple[int, int]:
        """Check an encoded index whose bytes before the trailer hash to ``body_digest``;
        returns (capacity, block size)."""
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
        if body_digest != blob[-32:]:
            raise IntegrityError(f"{where}: checksum mismatch")
        return capacity, block_size


_IO_PIECE = 8 << 20


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
