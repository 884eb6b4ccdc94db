"""Encryption at rest: the keys of an encrypted repository and the AEAD objects they seal.

Key hierarchy (docs/repository-format.md, "Encryption"):

    password --scrypt--> wrapping key --AES-256-GCM--> master key (32 random bytes)
    master key --HKDF-SHA256 "hypersdk chunk-id"--> chunk-id key (HMAC-SHA256 names)
    master key --HKDF-SHA256 "hypersdk seal"-----> sealing key (AES-256-GCM objects)

Every sealed object carries a fresh random 96-bit nonce, and its associated data binds
it to what it is and where it lies (a chunk to its id; a manifest or index to its kind
and relative path, each index segment to its number and whether it is the last), so a
sealed object moved, swapped, reordered or cut short fails to open. Everything that
fails is an ``IntegrityError``; nothing here ever logs or formats a key or a plaintext.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from hypersdk.errors import IntegrityError

KEY_BYTES = 32
NONCE_BYTES = 12  # 96 bits, random per object (GCM's recommended nonce size)
TAG_BYTES = 16
OVERHEAD = NONCE_BYTES + TAG_BYTES

# Sealed metadata object (manifest): magic, version, kind, reserved, then nonce + AEAD.
OBJECT_MAGIC = b"HSSO"
OBJECT_VERSION = 1
OBJECT_HEADER = struct.Struct("<4sBBH")  # magic, version, kind, reserved
KIND_MANIFEST = 1
KIND_INDEX = 2
_KIND_NAMES = {KIND_MANIFEST: b"manifest", KIND_INDEX: b"index"}

# Sealed segmented stream (index): header, then segments of nonce + AEAD(plain) + tag.
STREAM_MAGIC = b"HSSS"
STREAM_VERSION = 1
STREAM_HEADER = struct.Struct("<4sBBHI")  # magic, version, kind, reserved, segment size
SEGMENT_BYTES = 1 << 20  # plaintext bytes in every segment but the last
_SEGMENT_AD = struct.Struct("<QB")  # segment number, 1 if it is the last one


def _hkdf(master: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=label).derive(master)


@dataclass(frozen=True)
class RepositoryKeys:
    """The unlocked keys of one repository. ``repr`` never shows them, so a key cannot
    reach a log or a traceback through this object."""

    id_key: bytes = field(repr=False)
    aead: AESGCM = field(repr=False)

    @classmethod
    def from_master(cls, master: bytes) -> RepositoryKeys:
        if len(master) != KEY_BYTES:
            raise IntegrityError("the master key has the wrong length")
        return cls(
            id_key=_hkdf(master, b"hypersdk chunk-id"),
            aead=AESGCM(_hkdf(master, b"hypersdk seal")),
        )

    def seal(self, plaintext: bytes | bytearray | memoryview, associated: bytes) -> bytes:
        """nonce + ciphertext + tag."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self.aead.encrypt(nonce, plaintext, associated)

    def open(self, sealed: bytes | memoryview, associated: bytes, where: str) -> bytes:
        if len(sealed) < OVERHEAD:
            raise IntegrityError(f"{where}: truncated ({len(sealed)} bytes)")
        view = memoryview(sealed)
        try:
            return self.aead.decrypt(view[:NONCE_BYTES], view[NONCE_BYTES:], associated)
        except InvalidTag:
            raise IntegrityError(
                f"{where}: fails its authentication (damaged, moved or from another repository)"
            ) from None


# -- password wrapping of the master key --------------------------------------------------


@dataclass(frozen=True)
class ScryptCost:
    """scrypt's parameters, stored in each key file. ``DEFAULT`` takes ~0.18 s and 64 MiB
    on the 2-core development machine (log2 N = 16, r = 8, p = 1)."""

    log_n: int = 16
    r: int = 8
    p: int = 1

    def derive(self, password: bytes, salt: bytes) -> bytes:
        try:
            kdf = Scrypt(salt=salt, length=KEY_BYTES, n=1 << self.log_n, r=self.r, p=self.p)
            return kdf.derive(password)
        except (ValueError, MemoryError) as exc:
            raise IntegrityError(f"unusable scrypt parameters ({exc})") from None


DEFAULT_COST = ScryptCost()
# Tests only (HYPERSDK_INSECURE_KDF=1): ~1 ms. A key file made with it records it and
# ``hyperctl key list`` flags it; opening a repository never depends on it.
TEST_COST = ScryptCost(log_n=10)
MIN_LOG_N = 10


def wrap_master(master: bytes, password: bytes, cost: ScryptCost, salt: bytes, ad: bytes) -> bytes:
    """nonce + AES-256-GCM(scrypt(password), master key), bound to ``ad``."""
    wrapping = AESGCM(cost.derive(password, salt))
    nonce = os.urandom(NONCE_BYTES)
    return nonce + wrapping.encrypt(nonce, master, ad)


def unwrap_master(
    sealed: bytes, password: bytes, cost: ScryptCost, salt: bytes, ad: bytes
) -> bytes | None:
    """The master key, or None when the password (or the key file) is wrong."""
    if len(sealed) != OVERHEAD + KEY_BYTES:
        return None
    wrapping = AESGCM(cost.derive(password, salt))
    try:
        return wrapping.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], ad)
    except InvalidTag:
        return None


# -- sealed metadata objects ----------------------------------------------------------------


def _object_ad(header: bytes, name: str) -> bytes:
    return header + name.encode()


def seal_object(keys: RepositoryKeys, kind: int, name: str, plaintext: bytes) -> bytes:
    """A whole sealed object: the 8-byte header, nonce, ciphertext, tag. ``name`` (the
    object's path relative to the repository) is bound in as associated data."""
    header = OBJECT_HEADER.pack(OBJECT_MAGIC, OBJECT_VERSION, kind, 0)
    return header + keys.seal(plaintext, _object_ad(header, name))


def open_object(keys: RepositoryKeys, kind: int, name: str, blob: bytes, where: str) -> bytes:
    if len(blob) < OBJECT_HEADER.size:
        raise IntegrityError(f"{where}: truncated ({len(blob)} bytes)")
    magic, version, got_kind, reserved = OBJECT_HEADER.unpack_from(blob)
    if magic != OBJECT_MAGIC:
        raise IntegrityError(f"{where}: not a sealed object (bad magic {magic!r})")
    if version != OBJECT_VERSION:
        raise IntegrityError(f"{where}: unsupported sealed object version {version}")
    if got_kind != kind or reserved:
        raise IntegrityError(f"{where}: corrupt header")
    header = bytes(blob[: OBJECT_HEADER.size])
    return keys.open(memoryview(blob)[OBJECT_HEADER.size :], _object_ad(header, name), where)


# -- sealed segmented streams (indexes) -----------------------------------------------------
#
# An index can be 2 GiB (62 TiB disk): it is sealed in 1 MiB segments, each its own AEAD
# with (segment number, last?) in its associated data, so it is written and read a
# segment at a time, and a reordered, dropped or cut-off segment fails to open.


def _segment_ad(header: bytes, name: str, number: int, last: bool) -> bytes:
    return header + name.encode() + b"\0" + _SEGMENT_AD.pack(number, 1 if last else 0)


def _stream_header(kind: int, segment: int) -> bytes:
    return STREAM_HEADER.pack(STREAM_MAGIC, STREAM_VERSION, kind, 0, segment)


def sealed_size(plain_size: int, segment: int = SEGMENT_BYTES) -> int:
    """The file size of a sealed stream of ``plain_size`` bytes: every full segment, then
    a last one with the rest (possibly empty)."""
    full, rest = divmod(plain_size, segment)
    return STREAM_HEADER.size + full * (segment + OVERHEAD) + rest + OVERHEAD


class StreamWriter:
    """Writes a sealed stream to ``fd`` at increasing plaintext offsets; a gap between
    two writes reads back as zeros. ``finish`` seals the last segment."""

    def __init__(self, keys: RepositoryKeys, kind: int, name: str, fd: int) -> None:
        self._keys, self._name, self._fd = keys, name, fd
        self._header = _stream_header(kind, SEGMENT_BYTES)
        self._buf = bytearray()
        self._number = 0
        self._file_pos = 0
        self._emit(self._header)

    def _emit(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, self._file_pos)
            view = view[n:]
            self._file_pos += n

    def _seal(self, plain: bytes | bytearray | memoryview, last: bool) -> None:
        ad = _segment_ad(self._header, self._name, self._number, last)
        self._emit(self._keys.seal(plain, ad))
        self._number += 1

    def _append(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            room = SEGMENT_BYTES - len(self._buf)
            self._buf += view[:room]
            view = view[room:]
            if len(self._buf) == SEGMENT_BYTES:
                self._seal(self._buf, last=False)
                self._buf = bytearray()

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        written = self._number * SEGMENT_BYTES + len(self._buf)
        if offset < written:
            raise ValueError("a sealed stream is written front to back")
        if offset > written:
            self._fill(offset - written)
        self._append(data)

    def _fill(self, n: int) -> None:
        zeros = bytes(min(n, SEGMENT_BYTES))
        while n:
            step = min(n, len(zeros))
            self._append(memoryview(zeros)[:step])
            n -= step

    def finish(self, size: int) -> None:
        """End the stream at plaintext ``size`` (zeros up to it) with the last segment."""
        written = self._number * SEGMENT_BYTES + len(self._buf)
        if size < written:
            raise ValueError("a sealed stream cannot be cut shorter")
        self._fill(size - written)
        self._seal(self._buf, last=True)
        self._buf = bytearray()
        os.ftruncate(self._fd, self._file_pos)


class StreamReader:
    """Random access to the plaintext of a sealed stream in an open file: ``size`` comes
    from the file size, each read decrypts (and authenticates) the segments it covers."""

    def __init__(self, keys: RepositoryKeys, kind: int, name: str, fd: int, where: str) -> None:
        self._keys, self._name, self._fd, self._where = keys, name, fd, where
        file_size = os.fstat(fd).st_size
        head = os.pread(fd, STREAM_HEADER.size, 0)
        if len(head) < STREAM_HEADER.size:
            raise IntegrityError(f"{where}: truncated ({file_size} bytes)")
        magic, version, got_kind, reserved, segment = STREAM_HEADER.unpack(head)
        if magic != STREAM_MAGIC:
            raise IntegrityError(f"{where}: not a sealed stream (bad magic {magic!r})")
        if version != STREAM_VERSION:
            raise IntegrityError(f"{where}: unsupported sealed stream version {version}")
        if got_kind != kind or reserved or segment != SEGMENT_BYTES:
            raise IntegrityError(f"{where}: corrupt header")
        self._header = head
        full, rest = divmod(file_size - STREAM_HEADER.size, segment + OVERHEAD)
        if rest < OVERHEAD:  # no room for the last segment: cut short
            raise IntegrityError(f"{where}: truncated ({file_size} bytes)")
        self._segments = full + 1
        self.size = full * segment + rest - OVERHEAD
        self._cached: tuple[int, bytes] | None = None

    def _segment(self, number: int) -> bytes:
        if self._cached is not None and self._cached[0] == number:
            return self._cached[1]
        last = number == self._segments - 1
        length = (self.size - number * SEGMENT_BYTES if last else SEGMENT_BYTES) + OVERHEAD
        offset = STREAM_HEADER.size + number * (SEGMENT_BYTES + OVERHEAD)
        sealed = os.pread(self._fd, length, offset)
        if len(sealed) != length:
            raise IntegrityError(f"{self._where}: truncated (changed while it was read)")
        ad = _segment_ad(self._header, self._name, number, last)
        plain = self._keys.open(sealed, ad, f"{self._where} (segment {number})")
        self._cached = (number, plain)
        return plain

    def readinto(self, view: memoryview, offset: int) -> int:
        """Fill ``view`` from plaintext ``offset`` (less at the end); bytes filled."""
        got = 0
        while got < len(view) and offset + got < self.size:
            number, within = divmod(offset + got, SEGMENT_BYTES)
            plain = self._segment(number)
            n = min(len(view) - got, len(plain) - within)
            view[got : got + n] = plain[within : within + n]
            got += n
        return got
