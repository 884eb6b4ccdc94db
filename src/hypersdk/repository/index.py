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

In an encrypted repository the file holds these bytes as a sealed stream
(``crypto.StreamReader``/``StreamWriter``: 1 MiB AES-256-GCM segments bound to the
index's relative path), read and written through the same few calls as a plain file.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import mmap
import os
import struct
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hypersdk.errors import IntegrityError
from hypersdk.repository.crypto import KIND_INDEX, RepositoryKeys, StreamReader, StreamWriter
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
_IO_PIECE = 8 << 20  # bytes hashed at a time while reading an index
_PAGE = 4096  # a file system block: the unit of a hole


# The entries of an index: a bytearray, or for a large index read from a file an anonymous
# memory map (both slice, compare by slice, and assign slices alike).
Entries = bytearray | mmap.mmap
_MAPPED = 32 << 20  # entries from this size on (a 1 TiB disk at 1 MiB blocks) are mapped


@dataclass
class DiskIndex:
    """The entries of one index in a single buffer (32 bytes a block, as on disk): no
    Python object per block, and every scan over it runs in C."""

    capacity: int
    block_size: int
    entries: Entries

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

    def nonzero_blocks(self) -> Iterator[int]:
        """Every block with a chunk, in disk order, skipping zero runs a window at a
        time."""
        return _nonzero(self.entries, self.blocks)

    def chunks(self) -> Iterator[tuple[int, bytes]]:
        """(block, chunk id) for every non-zero block, in disk order."""
        buf = self.entries
        for block in self.nonzero_blocks():
            yield block, bytes(buf[block * ENTRY : (block + 1) * ENTRY])

    def zero_blocks(self) -> int:
        return self.blocks - sum(1 for _ in self.nonzero_blocks())

    def run_end(self, block: int, limit: int) -> int:
        """The first block after ``block`` (at most ``limit``) that is zero when
        ``block`` is not, or not zero when it is: the end of ``block``'s run. Zero runs
        are skipped a window at a time, data runs with one search for a zero entry."""
        buf = self.entries
        limit = min(limit, self.blocks)
        if buf[block * ENTRY : (block + 1) * ENTRY] == ZERO_ENTRY:
            return next(_nonzero(buf, limit, block + 1), limit)
        at = (block + 1) * ENTRY
        while at < limit * ENTRY:
            hit = buf.find(ZERO_ENTRY, at, limit * ENTRY)
            if hit < 0:
                break
            if hit % ENTRY == 0:
                return hit // ENTRY
            at = (hit // ENTRY + 1) * ENTRY  # zeros across two ids: not an entry
        return limit

    def _header(self) -> bytes:
        return HEADER.pack(
            MAGIC, VERSION, HASH_SHA256, 0, self.block_size, 0, self.capacity, self.blocks
        )

    def encode(self) -> bytes:
        body = self._header() + bytes(self.entries)
        return body + hashlib.sha256(body).digest()

    @classmethod
    def read(
        cls,
        path: Path,
        expected_sha256: str,
        where: str = "index",
        keys: RepositoryKeys | None = None,
    ) -> DiskIndex:
        """Read and check an index file: its SHA-256 must be ``expected_sha256`` (the
        manifest's), then every check of ``decode``. It streams through one small buffer,
        hashed once for both checksums; only pieces holding a chunk id are copied into
        the entries, and holes of a plain file are not even read. A large index's
        entries are an anonymous memory map whose untouched pages cost no memory, so a
        sparse 62 TiB disk's 2 GiB index takes as much memory as its data blocks' entries.
        With ``keys`` the file is a sealed stream named ``where`` (its relative path)."""
        src = _open_source(path, where, keys)
        entries: Entries | None = None
        try:
            size = src.size
            if size < HEADER.size + 32:
                raise IntegrityError(f"{where}: truncated ({size} bytes)")
            body_end = size - 32
            length = body_end - HEADER.size
            entries = zeroed_entries(length)
            h = hashlib.sha256()
            head = b""
            scratch = bytearray(min(_IO_PIECE, body_end))
            zeros = memoryview(_ZERO_PIECE_BYTES)
            for start in range(0, body_end, _IO_PIECE):
                n = min(_IO_PIECE, body_end - start)
                if start and src.is_hole(start, n):
                    # reads as zeros: nothing to read or copy (a wrong file system would
                    # fail the checksum)
                    h.update(zeros[:n])
                    continue
                with memoryview(scratch)[:n] as view:
                    _read_exactly(src, view, start, where)
                    h.update(view)
                if not start:
                    head = bytes(scratch[: HEADER.size])
                _copy_nonzero(scratch, n, entries, start - HEADER.size)
            body_digest = h.digest()
            trailer = _pread(src, 33, body_end)
            h.update(trailer)
            if len(trailer) != 32 or h.hexdigest() != expected_sha256:
                raise IntegrityError(f"{where}: does not match the checksum in the manifest")
            capacity, block_size = cls._check_parts(head, size, trailer, body_digest, where)
        except BaseException:
            if isinstance(entries, mmap.mmap):
                entries.close()
            raise
        finally:
            src.close()
        return cls(capacity, block_size, entries)

    @classmethod
    def decode(cls, blob: bytes, where: str = "index") -> DiskIndex:
        if len(blob) < HEADER.size + 32:
            raise IntegrityError(f"{where}: truncated ({len(blob)} bytes)")
        capacity, block_size = cls._check_parts(
            blob[: HEADER.size], len(blob), blob[-32:], hashlib.sha256(blob[:-32]).digest(), where
        )
        return cls(capacity, block_size, bytearray(blob[HEADER.size : -32]))

    @staticmethod
    def _check_parts(
        head: bytes, size: int, trailer: bytes, body_digest: bytes, where: str
    ) -> tuple[int, int]:
        """Check an encoded index of ``size`` bytes from its header, its trailer and the
        digest of the bytes before the trailer; returns (capacity, block size)."""
        if size < HEADER.size + 32:
            raise IntegrityError(f"{where}: truncated ({size} bytes)")
        capacity, block_size, count = _header_fields(head, where)
        if block_size <= 0 or block_size & (block_size - 1):
            raise IntegrityError(f"{where}: block size {block_size} is not a power of two")
        if count != block_count(capacity, block_size):
            raise IntegrityError(f"{where}: block count does not match the capacity")
        expected = HEADER.size + count * ENTRY + 32
        if size != expected:
            raise IntegrityError(f"{where}: truncated ({size} of {expected} bytes)")
        if body_digest != trailer:
            raise IntegrityError(f"{where}: checksum mismatch")
        return capacity, block_size


def _header_fields(blob: bytes | bytearray, where: str) -> tuple[int, int, int]:
    """(capacity, block size, block count) of a header whose magic, version, hash
    algorithm and reserved fields are right; IntegrityError before anything else is read."""
    magic, version, algo, res1, block_size, res2, capacity, count = HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise IntegrityError(f"{where}: bad magic {magic!r}")
    if version != VERSION:
        raise IntegrityError(f"{where}: unsupported index version {version}")
    if algo != HASH_SHA256 or res1 or res2:
        raise IntegrityError(f"{where}: corrupt header")
    return capacity, block_size, count


# -- building an index by streaming ---------------------------------------------------
#
# An export never holds a whole index: at 32 bytes a block a 62 TiB disk's index is
# 2 GiB. It streams the base (the parent's index file, or zeros) through a fixed buffer,
# patches the few entries the export changed, and writes, hashes and counts each piece.

_PIECE = 262144  # entries a piece: 8 MiB
_ZERO_PIECE_BYTES = bytes(_PIECE * ENTRY)


class _Source(Protocol):
    """An index's bytes as stored: a plain file, or the plaintext of a sealed one."""

    size: int

    def readinto(self, view: memoryview, offset: int) -> int: ...
    def is_hole(self, offset: int, size: int) -> bool: ...
    def close(self) -> None: ...


class _PlainSource:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = os.fstat(fd).st_size

    def readinto(self, view: memoryview, offset: int) -> int:
        got = 0
        while got < len(view):
            n = os.preadv(self.fd, [view[got:]], offset + got)
            if not n:
                break
            got += n
        return got

    def is_hole(self, offset: int, size: int) -> bool:
        return _is_hole(self.fd, offset, size)

    def close(self) -> None:
        os.close(self.fd)


class _SealedSource:
    def __init__(self, fd: int, reader: StreamReader) -> None:
        self.fd, self.reader, self.size = fd, reader, reader.size

    def readinto(self, view: memoryview, offset: int) -> int:
        return self.reader.readinto(view, offset)

    def is_hole(self, offset: int, size: int) -> bool:
        return False  # a sealed stream has no holes: every segment is authenticated

    def close(self) -> None:
        os.close(self.fd)


def _open_source(path: Path, where: str, keys: RepositoryKeys | None) -> _Source:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    if keys is None:
        return _PlainSource(fd)
    try:
        return _SealedSource(fd, StreamReader(keys, KIND_INDEX, where, fd, where))
    except BaseException:
        os.close(fd)
        raise


def _pread(src: _Source, n: int, offset: int) -> bytes:
    buf = bytearray(n)
    with memoryview(buf) as view:
        got = src.readinto(view, offset)
    return bytes(buf[:got])


@dataclass(frozen=True)
class IndexSource:
    """A stored index an export builds on: its file, the SHA-256 its manifest records
    and the name errors give it (its path relative to the repository, which is also
    what a sealed index is bound to). Nothing is trusted before ``build_index`` checked
    it. ``keys``: the repository's, when the index is sealed."""

    path: Path
    sha256: str
    where: str
    keys: RepositoryKeys | None = None

    def check_header(self, capacity: int, block_size: int) -> None:
        """Refuse early (before any data is copied) an index of another disk geometry,
        a damaged header or a wrong size; the checksums are checked while it streams."""
        try:
            src = _open_source(self.path, self.where, self.keys)
        except FileNotFoundError:
            raise IntegrityError(f"{self.where}: missing") from None
        try:
            header, size = _pread(src, HEADER.size, 0), src.size
        finally:
            src.close()
        _check_base_header(header, size, self.where, capacity, block_size)

    def read_entries(self, blocks: Sequence[int]) -> dict[int, bytes | None]:
        """The entries of ``blocks`` (sorted): chunk id, or None for a zero block. Read a
        window at a time, so a few blocks of a huge index cost a few small reads, never
        the whole file. A sealed index's segments are authenticated as they are read; a
        plain one is not hashed here: ``build_index`` checks its SHA-256 as it streams,
        and fails the export before anything is committed."""
        out: dict[int, bytes | None] = {}
        if not blocks:
            return out
        src = _open_source(self.path, self.where, self.keys)
        try:
            i = 0
            while i < len(blocks):
                first = blocks[i]
                j = bisect.bisect_left(blocks, first + _WINDOW, i)
                n = blocks[j - 1] - first + 1
                raw = _pread(src, n * ENTRY, HEADER.size + first * ENTRY)
                if len(raw) != n * ENTRY:
                    raise IntegrityError(f"{self.where}: cut short")
                for b in blocks[i:j]:
                    entry = raw[(b - first) * ENTRY : (b - first + 1) * ENTRY]
                    out[b] = None if entry == ZERO_ENTRY else entry
                i = j
        finally:
            src.close()
        return out


@dataclass(frozen=True)
class IndexTarget:
    """Where ``build_index`` writes: a new temp file; for an encrypted repository the
    keys and the index's final relative path, which its segments are bound to."""

    path: Path
    name: str = ""
    keys: RepositoryKeys | None = None


class _Sink(Protocol):
    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None: ...
    def finish(self, size: int) -> None: ...


class _PlainSink:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        _pwrite_all(self.fd, data, offset)

    def finish(self, size: int) -> None:
        os.ftruncate(self.fd, size)  # all-zero pieces left as holes count too


def _check_base_header(
    header: bytes, size: int, where: str, capacity: int, block_size: int
) -> None:
    if len(header) < HEADER.size:
        raise IntegrityError(f"{where}: truncated ({size} bytes)")
    cap, bsize, count = _header_fields(header, where)
    if (cap, bsize) != (capacity, block_size) or count != block_count(capacity, block_size):
        raise IntegrityError(f"{where}: capacity or block size differs from the manifest")
    expected = HEADER.size + count * ENTRY + 32
    if size != expected:
        raise IntegrityError(f"{where}: truncated ({size} of {expected} bytes)")


@dataclass(frozen=True)
class BuiltIndex:
    sha256: str  # of the whole file, as the manifest records it
    blocks: int
    zero_blocks: int


def build_index(
    dest: Path | IndexTarget,
    capacity: int,
    block_size: int,
    base: IndexSource | None,
    read_runs: list[tuple[int, int]],
    read_entries: bytes | Entries,
    zero_runs: list[tuple[int, int]],
) -> BuiltIndex:
    """Create ``dest`` (mode 0600; the caller renames it and makes it durable): ``base``
    (None: all zero) with the blocks of ``zero_runs`` zeroed and the blocks of
    ``read_runs``, in order, set to the consecutive 32-byte entries of ``read_entries``.
    Runs are sorted, disjoint ``[first, end)`` block ranges. ``base`` is checked as it
    streams (header, trailer, the manifest's SHA-256); IntegrityError if it fails, and
    ``dest`` is removed. Memory: two 8 MiB pieces, whatever the disk size. All-zero
    pieces are left as holes, so a sparse disk's index costs little space and flushing.
    A sealed ``dest`` (an ``IndexTarget`` with keys) is written as a sealed stream."""
    target = dest if isinstance(dest, IndexTarget) else IndexTarget(dest)
    count = block_count(capacity, block_size)
    if len(read_entries) != sum(e - f for f, e in read_runs) * ENTRY:
        raise ValueError("read_entries does not match read_runs")
    header = HEADER.pack(MAGIC, VERSION, HASH_SHA256, 0, block_size, 0, capacity, count)
    h_new = hashlib.sha256(header)
    src = _open_source(base.path, base.where, base.keys) if base is not None else None
    fd = -1
    try:
        h_base = None
        if src is not None and base is not None:
            head = _pread(src, HEADER.size, 0)
            _check_base_header(head, src.size, base.where, capacity, block_size)
            h_base = hashlib.sha256(head)
        fd = os.open(target.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        os.fchmod(fd, FILE_MODE)  # whatever the umask
        out: _Sink = (
            _PlainSink(fd)
            if target.keys is None
            else StreamWriter(target.keys, KIND_INDEX, target.name, fd)
        )
        out.pwrite(header, 0)
        piece = bytearray(min(_PIECE, count) * ENTRY)  # the base, as read
        patched = bytearray(len(piece))  # a patched piece
        zeros = memoryview(_ZERO_PIECE_BYTES)
        starts: list[int] = []  # entry offset in read_entries of each read run
        at = 0
        for f, e in read_runs:
            starts.append(at)
            at += e - f
        ri = zi = 0
        nonzero = 0
        with ThreadPoolExecutor(1, thread_name_prefix="index-hash") as pool:
            for p in range(0, count, _PIECE):
                q = min(p + _PIECE, count)
                size = (q - p) * ENTRY
                # This piece's patches: (first, end, replacement) in piece-relative bytes.
                patches: list[tuple[int, int, bytes | bytearray | memoryview]] = []
                while zi < len(zero_runs) and zero_runs[zi][1] <= p:
                    zi += 1
                k = zi
                while src is not None and k < len(zero_runs) and zero_runs[k][0] < q:
                    a, b = max(zero_runs[k][0], p), min(zero_runs[k][1], q)
                    patches.append(((a - p) * ENTRY, (b - p) * ENTRY, zeros[: (b - a) * ENTRY]))
                    k += 1
                while ri < len(read_runs) and read_runs[ri][1] <= p:
                    ri += 1
                k = ri
                while k < len(read_runs) and read_runs[k][0] < q:
                    f, e = read_runs[k]
                    a, b = max(f, p), min(e, q)
                    s = starts[k] + a - f
                    patches.append(
                        (
                            (a - p) * ENTRY,
                            (b - p) * ENTRY,
                            read_entries[s * ENTRY : (s + b - a) * ENTRY],
                        )
                    )
                    k += 1
                hashed = None
                offset = HEADER.size + p * ENTRY
                if src is not None and h_base is not None and src.is_hole(offset, size):
                    # A hole of the base reads as zeros: no read, copy or scan. (Were the
                    # file system wrong about it, the base's checksum would fail.)
                    hashed = pool.submit(h_base.update, zeros[:size])
                    if not patches:
                        h_new.update(zeros[:size])
                        hashed.result()
                        continue
                    patched[:size] = zeros[:size]
                    buf = patched
                elif src is not None and h_base is not None and base is not None:
                    _read_exactly(src, memoryview(piece)[:size], offset, base.where)
                    # The base's checksum runs on the other core meanwhile; an unpatched
                    # piece is hashed (twice, in parallel) and written as it was read.
                    hashed = pool.submit(h_base.update, memoryview(piece)[:size])
                    buf = piece
                    if patches:
                        patched[:size] = memoryview(piece)[:size]
                        buf = patched
                elif patches:
                    patched[:size] = zeros[:size]
                    buf = patched
                else:
                    h_new.update(zeros[:size])  # nothing in this piece of a new index
                    continue
                for first, end, data in patches:
                    buf[first:end] = data
                view = memoryview(buf)[:size]
                h_new.update(view)
                found = _count_nonzero(buf, q - p)
                if found:  # all-zero pages stay holes: nothing to write or flush
                    _write_nonzero(out, buf, size, HEADER.size + p * ENTRY)
                nonzero += found
                if hashed is not None:
                    hashed.result()
        body_digest = h_new.digest()
        h_new.update(body_digest)
        end = HEADER.size + count * ENTRY
        out.pwrite(body_digest, end)
        out.finish(end + 32)
        if src is not None and h_base is not None and base is not None:
            trailer = _pread(src, 33, end)
            base_body = h_base.digest()
            h_base.update(trailer)
            if h_base.hexdigest() != base.sha256:
                raise IntegrityError(f"{base.where}: does not match the checksum in the manifest")
            if len(trailer) != 32 or trailer != base_body:
                raise IntegrityError(f"{base.where}: checksum mismatch")
        os.close(fd)
        fd = -1
    except BaseException:
        if fd >= 0:
            os.close(fd)
            target.path.unlink(missing_ok=True)
        raise
    finally:
        if src is not None:
            src.close()
    return BuiltIndex(h_new.hexdigest(), count, count - nonzero)


def _nonzero(buf: Entries, n: int, first: int = 0) -> Iterator[int]:
    """The non-zero entries among entries ``[first, n)`` of ``buf``, in order. Zero
    entries are skipped a window at a time with one comparison (a bytearray slice
    compares with memcmp), so the cost follows the data, not the disk size."""
    for w in range(first, n, _WINDOW):
        w_end = min(w + _WINDOW, n)
        if buf[w * ENTRY : w_end * ENTRY] == _ZERO_WINDOW[: (w_end - w) * ENTRY]:
            continue
        for s in range(w, w_end, _SUB):
            s_end = min(s + _SUB, w_end)
            if buf[s * ENTRY : s_end * ENTRY] == _ZERO_WINDOW[: (s_end - s) * ENTRY]:
                continue
            for block in range(s, s_end):
                if buf[block * ENTRY : (block + 1) * ENTRY] != ZERO_ENTRY:
                    yield block


def _count_nonzero(buf: Entries, n: int) -> int:
    return sum(1 for _ in _nonzero(buf, n))


def _write_nonzero(out: _Sink, buf: bytearray, size: int, at: int) -> None:
    """Write ``buf[:size]`` at ``at``, leaving out its all-zero 4 KiB pages (holes read
    as zeros, in a plain file and a sealed stream alike): a piece holds 256 GiB of disk,
    so a disk with data spread over it would otherwise write a whole 2 GiB index per
    generation, and flush it."""
    start = -1  # where the run of non-zero pages being gathered starts
    with memoryview(buf) as view:
        for unit, zero in _zero_units(buf, size, -at % _PAGE):
            if zero and start >= 0:
                out.pwrite(view[start:unit], at + start)
                start = -1
            elif not zero and start < 0:
                start = unit
        if start >= 0:
            out.pwrite(view[start:size], at + start)


def _zero_units(buf: bytearray, size: int, head: int) -> Iterator[tuple[int, bool]]:
    """(start, all zero) of consecutive units covering ``buf[:size]``, cut at file pages
    (the first ``head`` bytes end one): an all-zero window as one unit, any other window
    page by page. (Slices of a bytearray compare with memcmp; a memoryview's compare a
    byte at a time, 100x slower.)"""
    step = len(_ZERO_WINDOW)
    starts = ([0] if head else []) + list(range(head, size, step))
    for i, w in enumerate(starts):
        w_end = starts[i + 1] if i + 1 < len(starts) else size
        if buf[w:w_end] == _ZERO_WINDOW[: w_end - w]:
            yield w, True
            continue
        for g in range(w, w_end, _PAGE):
            g_end = min(g + _PAGE, w_end)
            yield g, buf[g:g_end] == _ZERO_WINDOW[: g_end - g]


def zeroed_entries(size: int) -> Entries:
    """``size`` zero bytes for index entries: a bytearray when small, else memory whose
    untouched pages cost nothing (a sparse 62 TiB disk's 2 GiB of entries)."""
    return bytearray(size) if size < _MAPPED else _anonymous(size)


def _anonymous(size: int) -> mmap.mmap:
    """Zeroed memory whose pages cost nothing until written: private, so a read of an
    untouched page maps the kernel's zero page (a shared anonymous map would allocate)."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _copy_nonzero(piece: bytearray, n: int, entries: Entries, at: int) -> None:
    """Copy the first ``n`` bytes of ``piece`` (file bytes that start ``at`` bytes into the
    entries, negative for the header) into ``entries``, a window at a time, leaving
    all-zero windows alone: ``entries`` starts out zero, and a mapped page nobody wrote
    costs no memory."""
    step = len(_ZERO_WINDOW)
    for w in range(max(0, -at), n, step):
        w_end = min(w + step, n, len(entries) - at)
        if w_end <= w:
            break
        if piece[w:w_end] != _ZERO_WINDOW[: w_end - w]:
            entries[at + w : at + w_end] = piece[w:w_end]


def _read_exactly(src: _Source, view: memoryview, offset: int, where: str) -> None:
    if src.readinto(view, offset) != len(view):
        raise IntegrityError(f"{where}: truncated (changed while it was read)")


def _is_hole(fd: int, offset: int, size: int) -> bool:
    """Whether ``[offset, offset + size)`` of the file is a hole (reads as zeros)."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA) >= offset + size
    except OSError as exc:
        # ENXIO: no data from offset on. Anything else: no SEEK_DATA here; read it.
        return exc.errno == errno.ENXIO


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
