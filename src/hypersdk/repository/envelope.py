"""The object envelope: how one chunk is laid out on disk.

Version 2 (written today): a 20-byte header followed by the payload, integers little
endian:

    offset size  field
    0      4     magic b"HSCK"
    4      1     format version (2)
    5      1     compression: 0 none, 1 zstd, 2 lz4 (block format, no size prefix)
    6      2     reserved, must be 0
    8      4     plaintext length in bytes
    12     4     payload length in bytes (bytes that follow the header)
    16     4     CRC32C (Castagnoli) of bytes [0, 16) followed by the payload

Version 1 (still read) is the same without the CRC: a 16-byte header.

A sealed chunk (encrypted repositories, ``SealedCodec``) has its own magic:

    offset size  field
    0      4     magic b"HSCE"
    4      1     sealed chunk version (1)
    5      3     reserved, must be 0
    8      12    nonce (random, fresh per object)
    20     n+16  AES-256-GCM ciphertext and tag of: compression (1), reserved (3),
                 plaintext length (4, little endian), payload (n - 8 bytes)

Its associated data is bytes [0, 8) followed by the 32-byte chunk id, and the chunk id is
keyed BLAKE3 (``keyed-blake3``) or HMAC-SHA256 (``hmac-sha256``) of the plaintext under the
repository's chunk-id key: the name reveals nothing without the key, and a sealed chunk
put under another chunk's name fails to open.

In a plain repository the chunk id is the BLAKE3 (``blake3``) or SHA-256 (``sha256``, every
repository made before BLAKE3) of the plaintext, as its config's ``hash`` says. A reader
checks magic, version, compression, lengths and (v2) the CRC before decompressing, and
the hash after, raising
``IntegrityError`` on any mismatch: nothing unchecked ever leaves this module. The CRC
lets a writer check a stored chunk it wants to reuse with one read and no
decompression (``Codec.reusable``): a crash can leave a chunk's name over empty or
zeroed bytes, and a name alone proves nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import threading
from enum import IntEnum

import blake3
import google_crc32c
import lz4.block
import zstandard

from hypersdk.errors import IntegrityError, UsageError
from hypersdk.repository.crypto import OVERHEAD, RepositoryKeys

Buffer = bytes | bytearray | memoryview

MAGIC = b"HSCK"
VERSION = 2
HEADER_V1 = struct.Struct("<4sBBHII")
HEADER = struct.Struct("<4sBBHIII")  # version 2
MAX_PLAINTEXT = 16 * 1024 * 1024
SEALED_MAGIC = b"HSCE"
SEALED_VERSION = 1
SEALED_HEADER = struct.Struct("<4sB3s")  # magic, version, reserved
SEALED_INNER = struct.Struct("<B3sI")  # compression, reserved, plaintext length


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


# How a repository names its chunks (its config's ``hash``): plain repositories made
# before BLAKE3 keep SHA-256; encrypted ones use the keyed form of the same hash.
PLAIN_HASHES = ("blake3", "sha256")
KEYED_HASHES = {"blake3": "keyed-blake3", "sha256": "hmac-sha256"}
DEFAULT_HASH = "blake3"


def chunk_id(plaintext: bytes | memoryview, hash_name: str) -> bytes:
    """The 32-byte id of a chunk in a plain repository whose config says ``hash_name``.
    hashlib and blake3 both drop the GIL, so the export's workers hash in parallel."""
    if hash_name == "blake3":
        return blake3.blake3(plaintext).digest()
    if hash_name == "sha256":
        return hashlib.sha256(plaintext).digest()
    raise ValueError(f"unknown chunk hash {hash_name!r}")


class Codec:
    """Seals and opens chunk objects; safe to share between threads."""

    def __init__(
        self,
        compression: Compression = Compression.ZSTD,
        level: int = 1,
        hash_name: str = DEFAULT_HASH,
    ) -> None:
        if hash_name not in PLAIN_HASHES:
            raise ValueError(f"unknown chunk hash {hash_name!r}")
        self.compression = compression
        self.level = level
        self.hash_name = hash_name
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

    def chunk_id(self, plaintext: bytes | memoryview) -> bytes:
        """The name this repository gives a chunk. Every caller names chunks through the
        repository's codec, never through the module function, so a repository can
        choose how it names them (an encrypted one uses a keyed hash)."""
        return chunk_id(plaintext, self.hash_name)

    def _compress(self, plaintext: bytes | memoryview) -> tuple[Compression, bytes]:
        """(method, payload); no compression when it would not shrink the block. The
        payload is bytes (google_crc32c takes nothing else), a copy of a buffer given."""
        method = self.compression
        if method is Compression.ZSTD:
            payload = self._zstd_c().compress(plaintext)
        elif method is Compression.LZ4:
            payload = lz4.block.compress(plaintext, store_size=False)
        if method is Compression.NONE or len(payload) >= len(plaintext):
            method, payload = Compression.NONE, bytes(plaintext)
        return method, payload

    def seal(self, plaintext: bytes | memoryview, chunk_id: bytes | None = None) -> bytes:
        """Header + payload. ``chunk_id`` (this codec's name for ``plaintext``, when the
        caller has it) saves a sealing codec from hashing the block again."""
        return b"".join(self.seal_parts(plaintext, chunk_id))

    def seal_parts(
        self, plaintext: bytes | memoryview, chunk_id: bytes | None = None
    ) -> list[bytes]:
        """The sealed object as pieces whose concatenation is ``seal``'s result: a writer
        hands them to one writev instead of copying the payload behind its header."""
        method, payload = self._compress(plaintext)
        head = HEADER_V1.pack(MAGIC, VERSION, method, 0, len(plaintext), len(payload))
        crc: int = google_crc32c.extend(google_crc32c.value(head), payload)
        return [head + crc.to_bytes(4, "little"), payload]

    def open(self, blob: bytes, expected_id: bytes, where: str = "chunk") -> bytes:
        """Check and decode one object; ``where`` names it in error messages."""
        method, plain_len, payload = _unwrap(blob, where)
        return self._decode(method, plain_len, payload, expected_id, where)

    def _decode(
        self,
        method: int,
        plain_len: int,
        payload: bytes | memoryview,
        expected_id: bytes,
        where: str,
    ) -> bytes:
        try:
            if method == Compression.NONE:
                # a v2 payload is already a copy of its own (made for the CRC)
                plaintext = payload if isinstance(payload, bytes) else bytes(payload)
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
        if self.chunk_id(plaintext) != expected_id:
            raise IntegrityError(f"{where}: content does not match its hash")
        return plaintext

    def open_into(
        self, blob: Buffer, expected_id: bytes, out: bytearray, where: str = "chunk"
    ) -> memoryview:
        """``open`` without a new buffer per chunk: a zstd payload is decompressed into
        ``out`` (at least the plaintext's length), an uncompressed one is returned as a
        view of its payload (in version 2 the copy its CRC was computed over). The view
        is checked as ``open`` checks its bytes, and is valid until the caller reuses
        ``out`` or ``blob``."""
        method, plain_len, payload = _unwrap(blob, where)
        return self._decode_into(method, plain_len, payload, expected_id, out, where)

    def _decode_into(
        self,
        method: int,
        plain_len: int,
        payload: bytes | memoryview,
        expected_id: bytes,
        out: bytearray,
        where: str,
    ) -> memoryview:
        if method == Compression.ZSTD and plain_len <= len(out):
            plaintext = memoryview(out)[:plain_len]
            try:
                _zstd_into(self._zstd_d(), payload, plaintext, where)
            except zstandard.ZstdError as exc:
                raise IntegrityError(f"{where}: cannot decompress ({exc})") from exc
        elif method == Compression.NONE:
            plaintext = memoryview(payload)
            if len(plaintext) != plain_len:
                raise IntegrityError(
                    f"{where}: decoded {len(plaintext)} bytes, expected {plain_len}"
                )
        else:  # lz4 (no decode-into API) or a buffer too small: the general path
            return memoryview(self._decode(method, plain_len, payload, expected_id, where))
        if self.chunk_id(plaintext) != expected_id:
            raise IntegrityError(f"{where}: content does not match its hash")
        return plaintext

    def reusable(self, blob: bytes, expected_id: bytes) -> bool:
        """Whether a stored object may be reused instead of written again.

        Version 2: header, lengths and CRC32C, without decompressing (one pass over the
        bytes at memory speed). Version 1 has no CRC, so it is decoded and hashed in full.
        """
        try:
            if blob[4:5] == bytes([VERSION]):
                _unwrap(blob, "chunk")
            else:
                self.open(blob, expected_id)
        except IntegrityError:
            return False
        return True


class SealedCodec(Codec):
    """The codec of an encrypted repository: chunks are named by keyed BLAKE3 (or, in
    repositories made before it, HMAC-SHA256) under the repository's chunk-id key and
    sealed with AES-256-GCM after compression."""

    def __init__(
        self,
        keys: RepositoryKeys,
        compression: Compression = Compression.ZSTD,
        level: int = 1,
        hash_name: str = DEFAULT_HASH,
    ) -> None:
        super().__init__(compression, level, hash_name)
        self._keys = keys

    def chunk_id(self, plaintext: bytes | memoryview) -> bytes:
        # Both are one-shot and drop the GIL (OpenSSL's HMAC, blake3's keyed mode).
        if self.hash_name == "blake3":
            return blake3.blake3(plaintext, key=self._keys.id_key).digest()
        return hmac.digest(self._keys.id_key, plaintext, "sha256")

    def seal_parts(
        self, plaintext: bytes | memoryview, chunk_id: bytes | None = None
    ) -> list[bytes]:
        cid = self.chunk_id(plaintext) if chunk_id is None else chunk_id
        method, payload = self._compress(plaintext)
        head = SEALED_HEADER.pack(SEALED_MAGIC, SEALED_VERSION, bytes(3))
        inner = SEALED_INNER.pack(method, bytes(3), len(plaintext))
        return [head, self._keys.seal(inner + payload, head + cid)]

    def _unseal(self, blob: bytes, expected_id: bytes, where: str) -> tuple[int, int, memoryview]:
        if len(blob) < SEALED_HEADER.size + OVERHEAD + SEALED_INNER.size:
            raise IntegrityError(f"{where}: truncated ({len(blob)} bytes)")
        magic, version, reserved = SEALED_HEADER.unpack_from(blob)
        if magic != SEALED_MAGIC:
            raise IntegrityError(f"{where}: bad magic {magic!r} (not a sealed chunk)")
        if version != SEALED_VERSION or reserved != bytes(3):
            raise IntegrityError(f"{where}: unsupported sealed chunk version {version}")
        if len(blob) > SEALED_HEADER.size + OVERHEAD + SEALED_INNER.size + MAX_PLAINTEXT:
            raise IntegrityError(f"{where}: larger than any chunk")
        head = blob[: SEALED_HEADER.size]
        inner = self._keys.open(memoryview(blob)[SEALED_HEADER.size :], head + expected_id, where)
        method, reserved, plain_len = SEALED_INNER.unpack_from(inner)
        if reserved != bytes(3) or plain_len > MAX_PLAINTEXT or method not in iter(Compression):
            raise IntegrityError(f"{where}: corrupt header")
        return method, plain_len, memoryview(inner)[SEALED_INNER.size :]

    def open(self, blob: bytes, expected_id: bytes, where: str = "chunk") -> bytes:
        method, plain_len, payload = self._unseal(blob, expected_id, where)
        return self._decode(method, plain_len, payload, expected_id, where)

    def open_into(
        self, blob: Buffer, expected_id: bytes, out: bytearray, where: str = "chunk"
    ) -> memoryview:
        # AES-GCM decrypts into a new buffer anyway; only the decompression reuses ``out``.
        sealed = blob if isinstance(blob, bytes) else bytes(blob)
        method, plain_len, payload = self._unseal(sealed, expected_id, where)
        return self._decode_into(method, plain_len, payload, expected_id, out, where)

    def reusable(self, blob: bytes, expected_id: bytes) -> bool:
        """Authenticated (GCM tag) under this name: enough to reuse, no decompression."""
        try:
            self._unseal(blob, expected_id, "chunk")
        except IntegrityError:
            return False
        return True


def _zstd_into(
    d: zstandard.ZstdDecompressor, payload: bytes | memoryview, out: memoryview, where: str
) -> None:
    """Decompress one zstd frame that must fill ``out`` exactly (no more, no less)."""
    with d.stream_reader(payload) as reader:
        filled = 0
        while filled < len(out):
            n = reader.readinto(out[filled:])
            if n == 0:
                raise IntegrityError(f"{where}: decoded {filled} bytes, expected {len(out)}")
            filled += n
        if reader.read(1):
            raise IntegrityError(f"{where}: decodes to more than {len(out)} bytes")


def _unwrap(blob: Buffer, where: str) -> tuple[int, int, bytes | memoryview]:
    """(compression, plaintext length, payload) of an object whose envelope checks out:
    in version 2 the payload is the copy the CRC was computed over, so that a caller
    needing its own bytes (an uncompressed chunk) does not copy it again."""
    if len(blob) < HEADER_V1.size:
        raise IntegrityError(f"{where}: truncated header ({len(blob)} bytes)")
    magic, version, method, reserved, plain_len, payload_len = HEADER_V1.unpack_from(blob)
    if magic != MAGIC:
        raise IntegrityError(f"{where}: bad magic {magic!r}")
    if version == 1:
        size = HEADER_V1.size
    elif version == VERSION:
        size = HEADER.size
        if len(blob) < size:
            raise IntegrityError(f"{where}: truncated header ({len(blob)} bytes)")
    else:
        raise IntegrityError(f"{where}: unsupported object version {version}")
    if reserved != 0 or plain_len > MAX_PLAINTEXT or method not in iter(Compression):
        raise IntegrityError(f"{where}: corrupt header")
    if len(blob) != size + payload_len:
        raise IntegrityError(
            f"{where}: payload is {len(blob) - size} bytes, header says {payload_len}"
        )
    payload: bytes | memoryview = memoryview(blob)[size:]
    if version == VERSION:
        # google_crc32c takes bytes only: the slice copies, ~25 us per MiB.
        body = blob[size:] if isinstance(blob, bytes) else bytes(payload)
        crc = google_crc32c.extend(google_crc32c.value(bytes(blob[: HEADER_V1.size])), body)
        if crc != int.from_bytes(blob[HEADER_V1.size : size], "little"):
            raise IntegrityError(f"{where}: checksum mismatch (CRC32C)")
        payload = body
    return method, plain_len, payload
