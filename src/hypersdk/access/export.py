"""One generation's disk as an NBD export backend (:class:`hypersdk.nbd.server.ExportBackend`).

Reads go through the repository's public read API only (``Repository.load_index``,
``restore.read_chunk``, which opens and checks each chunk through the repository's
codec), so the export works whatever storage or encryption lies underneath. A chunk
that fails its check fails the read with EIO and a message naming the chunk; it is never
served.

Decoded chunks are kept in an LRU cache bounded in bytes. Two requests that need the same
chunk at once decode it once: the second waits for the first.

Writable exports keep every write in an :class:`Overlay`: a private temp file (unlinked at
once, so it is gone at exit, crash included) plus a per-block state. The repository is
never written. The shared repository lock is held from open to close, so gc cannot delete
a chunk being served.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

from hypersdk.errors import IntegrityError
from hypersdk.nbd import protocol as p
from hypersdk.nbd.server import Piece
from hypersdk.repository.index import ENTRY, ZERO_ENTRY, DiskIndex
from hypersdk.repository.manifest import Manifest
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import read_chunk

DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
_MAX_STATUS_BLOCKS = 65536  # blocks scanned for one block status reply (with an overlay)
_MAX_STATUS_EXTENTS = 64  # extents in one block status reply

# Overlay block states.
BASE = 0  # the repository's block
DATA = 1  # the overlay file holds the block
ZERO = 2  # the block was trimmed or zeroed: reads as zeros


class ChunkCache:
    """Decoded chunks by id, least recently used dropped first, at most ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[bytes, bytes] = OrderedDict()
        self._loading: dict[bytes, threading.Event] = {}
        self._lock = threading.Lock()

    def get(self, cid: bytes, load: Callable[[], bytes]) -> bytes:
        while True:
            with self._lock:
                data = self._items.get(cid)
                if data is not None:
                    self._items.move_to_end(cid)
                    self.hits += 1
                    return data
                waiting = self._loading.get(cid)
                if waiting is None:
                    event = self._loading[cid] = threading.Event()
                    self.misses += 1
                    break
            waiting.wait()
        try:
            data = load()
            with self._lock:
                self._put(cid, data)
            return data
        finally:
            with self._lock:
                del self._loading[cid]
            event.set()

    def _put(self, cid: bytes, data: bytes) -> None:
        if len(data) > self.limit:
            return
        self._items[cid] = data
        self.size += len(data)
        while self.size > self.limit:
            _, old = self._items.popitem(last=False)
            self.size -= len(old)


class Overlay:
    """Writes on top of a read-only disk, at block granularity (copy on write).

    The file is sparse and private (``TemporaryFile``: created unlinked, mode 0600), so
    the writes vanish when the process ends, however it ends.
    """

    def __init__(self, capacity: int, block_size: int, blocks: int, folder: str | None) -> None:
        self.block_size = block_size
        self.capacity = capacity
        self.state = bytearray(blocks)
        # Kept open for the export's lifetime, closed by close().
        self._file = tempfile.TemporaryFile(prefix="hypersdk-overlay-", dir=folder)  # noqa: SIM115
        self.fd = self._file.fileno()
        os.ftruncate(self.fd, capacity)
        self.lock = threading.Lock()

    def close(self) -> None:
        self._file.close()

    def pread(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        return data + bytes(length - len(data))

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n

    def punch(self, offset: int, length: int) -> None:
        """Drop the bytes of a whole block: a hole in the temp file where the file
        system can punch one, else written zeros."""
        try:
            _punch_hole(self.fd, offset, length)
        except OSError:
            self.pwrite(offset, bytes(length))


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def _punch_hole(fd: int, offset: int, length: int) -> None:
    # The os module has posix_fallocate but not fallocate(2)'s punch-hole mode.
    libc = ctypes.CDLL(None, use_errno=True)
    res = libc.fallocate(
        ctypes.c_int(fd),
        ctypes.c_int(_FALLOC_FL_KEEP_SIZE | _FALLOC_FL_PUNCH_HOLE),
        ctypes.c_longlong(offset),
        ctypes.c_longlong(length),
    )
    if res != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class RepositoryExport:
    """The disk ``disk_key`` of generation ``manifest``, served block by block.

    Use as a context manager (or call :meth:`close`): it holds the repository's shared
    lock and, when writable, the overlay file.
    """

    def __init__(
        self,
        repo: Repository,
        manifest: Manifest,
        disk_key: str,
        *,
        writable: bool = False,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        overlay_dir: str | os.PathLike[str] | None = None,
        on_read: Callable[[int], None] | None = None,
    ) -> None:
        self.repo = repo
        self.manifest = manifest
        self.disk_key = disk_key
        self.where = f"{manifest.vm_id}/{manifest.id}/{disk_key}"
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(repo.reader())
        try:
            self.index: DiskIndex = repo.load_index(manifest, disk_key)
        except BaseException:
            self._stack.close()
            raise
        self.cache = ChunkCache(cache_bytes)
        self.on_read = on_read
        self.bytes_read = 0
        self._count_lock = threading.Lock()
        self.overlay: Overlay | None = None
        if writable:
            folder = None if overlay_dir is None else str(Path(overlay_dir))
            self.overlay = Overlay(
                self.index.capacity, self.index.block_size, self.index.blocks, folder
            )
            self._stack.callback(self.overlay.close)

    def __enter__(self) -> RepositoryExport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    # -- ExportBackend -------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.index.capacity

    @property
    def writable(self) -> bool:
        return self.overlay is not None

    @property
    def multi_conn(self) -> bool:
        # One backend object, one overlay file behind every connection: a completed write
        # is seen by all, and a flush (fsync of that file) covers all.
        return True

    @property
    def preferred_block_size(self) -> int:
        return self.index.block_size

    def _entry(self, block: int) -> bytes | None:
        raw = bytes(self.index.entries[block * ENTRY : (block + 1) * ENTRY])
        return None if raw == ZERO_ENTRY else raw

    def _base_block(self, block: int) -> bytes | None:
        """The repository's bytes of ``block``, or None when it is zero."""
        cid = self._entry(block)
        if cid is None:
            return None
        offset = block * self.index.block_size
        length = self.index.block_length(block)

        def load() -> bytes:
            data = read_chunk(self.repo, cid, f"{self.where} @{offset}")
            if len(data) != length:
                raise IntegrityError(
                    f"{self.where} @{offset}: chunk holds {len(data)} bytes, the block {length}"
                )
            return data

        return self.cache.get(cid, load)

    def read(self, offset: int, length: int) -> Sequence[Piece]:
        bs = self.index.block_size
        pieces: list[Piece] = []
        pos, end = offset, offset + length
        while pos < end:
            block = pos // bs
            start = block * bs
            stop = min(start + self.index.block_length(block), end)
            n = stop - pos
            state = self.overlay.state[block] if self.overlay is not None else BASE
            if state == DATA:
                assert self.overlay is not None
                pieces.append(Piece(n, self.overlay.pread(pos, n)))
            elif state == ZERO:
                pieces.append(Piece(n))
            else:
                data = self._base_block(block)
                if data is None:
                    pieces.append(Piece(n))
                else:
                    rel = pos - start  # a view, not a copy: replies go out from the cache
                    pieces.append(
                        Piece(n, data if n == len(data) else memoryview(data)[rel : rel + n])
                    )
            pos = stop
        self._count(length)
        return _merge_holes(pieces)

    def _count(self, n: int) -> None:
        with self._count_lock:
            self.bytes_read += n
        if self.on_read is not None:
            self.on_read(n)

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        bs = self.index.block_size
        end = min(offset + length, self.index.capacity)
        extents: list[tuple[int, int]] = []
        pos = offset
        if self.overlay is None:
            # Whole runs from the index: a client asking about the rest of the disk
            # at every step (qemu-img convert does) costs a run, not a scan to the end.
            last = -(-end // bs)
            while pos < end and len(extents) < _MAX_STATUS_EXTENTS:
                block = pos // bs
                stop = min(self.index.run_end(block, last) * bs, end)
                flags = p.STATE_HOLE | p.STATE_ZERO if self._entry(block) is None else 0
                extents.append((stop - pos, flags))
                pos = stop
            return extents
        scanned = 0
        while pos < end and scanned < _MAX_STATUS_BLOCKS:
            block = pos // bs
            stop = min((block + 1) * bs, end)
            flags = self._flags(block)
            if extents and extents[-1][1] == flags:
                extents[-1] = (extents[-1][0] + stop - pos, flags)
            else:
                extents.append((stop - pos, flags))
            pos = stop
            scanned += 1
        return extents

    def _flags(self, block: int) -> int:
        state = self.overlay.state[block] if self.overlay is not None else BASE
        if state == DATA:
            return 0
        if state == ZERO or self._entry(block) is None:
            return p.STATE_HOLE | p.STATE_ZERO
        return 0

    def write(self, offset: int, data: bytes) -> None:
        self._modify(offset, len(data), data)

    def zero(self, offset: int, length: int) -> None:
        self._modify(offset, length, None)

    def flush(self) -> None:
        if self.overlay is not None:
            os.fsync(self.overlay.fd)

    def _modify(self, offset: int, length: int, data: bytes | None) -> None:
        """Copy on write, a block at a time: a block first written in part is copied
        whole into the overlay before its state flips, so a read never sees half of it."""
        overlay = self.overlay
        if overlay is None:
            raise IntegrityError("the export is read-only")  # the server refuses earlier
        bs = self.index.block_size
        pos, end = offset, offset + length
        view = memoryview(data) if data is not None else None
        with overlay.lock:
            while pos < end:
                block = pos // bs
                start = block * bs
                blen = self.index.block_length(block)
                stop = min(start + blen, end)
                whole = pos == start and stop == start + blen
                state = overlay.state[block]
                if whole and view is None:
                    overlay.punch(start, blen)
                    overlay.state[block] = ZERO
                else:
                    if state != DATA and not whole:
                        base = None if state == ZERO else self._base_block(block)
                        overlay.pwrite(start, memoryview(base or bytes(blen)))
                    part = (
                        view[pos - offset : stop - offset]
                        if view is not None
                        else memoryview(bytes(stop - pos))
                    )
                    overlay.pwrite(pos, part)
                    overlay.state[block] = DATA
                pos = stop


def _merge_holes(pieces: list[Piece]) -> list[Piece]:
    out: list[Piece] = []
    for piece in pieces:
        if piece.data is None and out and out[-1].data is None:
            out[-1] = Piece(out[-1].length + piece.length)
        else:
            out.append(piece)
    return out
