"""The object envelope: how one chunk is laid out on disk.

Every chunk file is a 16-byte header followed by the payload (all integers little endian):

    offset size  field
    0      4     magic b"HSCK"
    4      1     format version (1)
    5      1     compression: 0 none, 1 zstd, 2 lz4 (block format, no size prefix)
    6      2     reserved, must be 0
    8      4     plaintext length in bytes
    12     4     payload length in bytes (bytes that follow the header)

The chunk id is the SHA-256 of the plaintext. A reader checks magic, version, compression
and lengths before decompressing, and the hash after, raising ``IntegrityError`` on any
mismatch: nothing unchecked ever leaves this module.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from enum import IntEnum

import lz4.block
import zstandard

from hypersdk.errors import IntegrityError, UsageError

MAGIC = b"HSCK"
VERSION = 1
HEADER = struct.Struct("<4sBBHII")
MAX_PLAINTEXT = 16 * 1024 * 1024


class Compression(IntEnum):
    NONE = 0
    ZSTD = 1
    LZ4 = 2

    @classmethod
    def parse(cls, name: str) -> Compression:
        try:
            return cls[name.upper()]
        except KeyError:
            raise UsageError(f"unknown compression {name!r}: choose zstd, lz4 or none") from None


def chunk_id(plaintext: bytes | memoryview) -> bytes:
    """The 32-byte id of a chunk: SHA-256 of its plaintext (hashlib drops the GIL)."""
    return hashlib.sha256(plaintext).digest()


class Codec:
    """Seals and opens chunk objects; safe to share between threads."""

    def __init__(self, compression: Compression = Compression.ZSTD, level: int = 1) -> None:
        self.compression = compression
        self.level = level
        self._local = threading.local()

    def _zstd_c(self) -> zstandard.ZstdCompressor:
        c: zstandard.ZstdCompressor | None = getattr(self._local, "zc", None)
        if c is None:
            c = zstandard.ZstdCompressor(level=self.level)
            self._local.zc = c
        return c

    def _zstd_d(self) -> zstandard.ZstdDecompressor:
        d: zstandard.ZstdDecompressor | None = getattr(self._local, "zd", None)
        if d is None:
            d = zstandard.ZstdDecompressor()
            self._local.zd = d
        return d

    def seal(self, plaintext: bytes) -> bytes:
        """Header + payload. Falls back to no compression when it would not shrink."""
        method = self.compression
        payload: bytes = plaintext
        if method is Compression.ZSTD:
            payload = self._zstd_c().compress(plaintext)
        elif method is Compression.LZ4:
            payload = lz4.block.compress(plaintext, store_size=False)
        if method is not Compression.NONE and len(payload) >= len(plaintext):
            method, payload = Compression.NONE, plaintext
        header = HEADER.pack(MAGIC, VERSION, method, 0, len(plaintext), len(payload))
        return header + payload

    def open(self, blob: bytes, expected_id: bytes, where: str = "chunk") -> bytes:
        """Check and decode one object; ``where`` names it in error messages."""
        if len(blob) < HEADER.size:
            raise IntegrityError(f"{where}: truncated header ({len(blob)} bytes)")
        magic, version, method, reserved, plain_len, payload_len = HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise IntegrityError(f"{where}: bad magic {magic!r}")
        if version != VERSION:
            raise IntegrityError(f"{where}: unsupported object version {version}")
        if reserved != 0 or plain_len > MAX_PLAINTEXT:
            raise IntegrityError(f"{where}: corrupt header")
        if len(blob) != HEADER.size + payload_len:
            raise IntegrityError(
                f"{where}: payload is {len(blob) - HEADER.size} bytes, header says {payload_len}"
            )
        payload = memoryview(blob)[HEADER.size :]
        try:
            if method == Compression.NONE:
                plaintext = bytes(payload)
            elif method == Compression.ZSTD:
                plaintext = self._zstd_d().decompress(payload, max_output_size=plain_len)
            elif method == Compression.LZ4:
                plaintext = lz4.block.decompress(payload, uncompressed_size=plain_len)
            else:
                raise IntegrityError(f"{where}: unknown compression {method}")
        except (zstandard.ZstdError, lz4.block.LZ4BlockError) as exc:
            raise IntegrityError(f"{where}: cannot decompress ({exc})") from exc
        if len(plaintext) != plain_len:
            raise IntegrityError(f"{where}: decoded {len(plaintext)} bytes, expected {plain_len}")
        if chunk_id(plaintext) != expected_id:
            raise IntegrityError(f"{where}: content does not match its hash")
        return plaintext
