"""Restore one disk of one generation to a file.

Raw images are written sparse: zero blocks stay holes. qcow2 and vmdk are written by an
``ImageConverter`` the caller hands in (``hypersdk.access.image``: ``qemu-img convert``
reading the generation served over NBD, with no raw intermediate). Every chunk is
checked against its hash as it is read; on any failure the partial output is removed
and nothing is left behind.

The raw path is CPU-bound (the chunk hash, zstd, the kernel's copy into the page cache), so it
does nothing else per chunk: each worker thread reads a chunk file into its own reused
buffer, decompresses into a second one (``read_chunk_into``, ``Codec.open_into``),
hashes and writes from there; a chunk stored uncompressed is written from the copy its
CRC was computed over. Writeback is started every ``WRITEBACK_BATCH`` bytes, so the disk
writes while chunks are decoded and the closing fsync is short (the same for the file
qemu-img writes, ``_WritebackWhile``).

Temp files live in a private (0700) folder beside the target, on the same file system,
and the finished image (0600) is published by one rename: without ``force`` a rename that
never replaces (a file that appeared at the target meanwhile is kept and the restore
fails), with ``force`` an atomic replace. The repository lock is held shared throughout,
so gc cannot delete a chunk being read.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hypersdk.errors import (
    ConflictError,
    ExportCancelled,
    IntegrityError,
    RepositoryError,
    UsageError,
)
from hypersdk.repository.files import (
    DIR_MODE,
    FILE_MODE,
    fsync_dir,
    fsync_path,
    rename_no_replace,
    start_writeback,
)
from hypersdk.repository.index import DiskIndex
from hypersdk.repository.manifest import Manifest
from hypersdk.repository.repository import Repository

FORMATS = ("raw", "qcow2", "vmdk")


class ImageConverter(Protocol):
    """Writes the disk being restored as a new ``fmt`` image at ``out`` (a path in the
    restore's private work folder) and returns the data bytes it wrote."""

    def __call__(self, out: Path, fmt: str) -> int: ...


@dataclass
class RestoreResult:
    vm_id: str
    generation: str
    disk: str
    path: str
    format: str
    capacity_bytes: int
    bytes_written: int
    zero_blocks: int


def read_chunk(repo: Repository, cid: bytes, where: str) -> bytes:
    """Read, check and decode one chunk; any problem is an IntegrityError naming ``where``."""
    try:
        blob = repo.chunks.get(cid)
    except FileNotFoundError:
        raise IntegrityError(f"{where}: chunk {cid.hex()} is missing") from None
    return repo.codec.open(blob, cid, f"{where}: chunk {cid.hex()}")


class ChunkBuffers(threading.local):
    """One thread's buffers for ``read_chunk_into``: the stored object and its
    decompressed plaintext, reused from chunk to chunk. Measured on the 2-core machine:
    zstd into a new 1 MiB bytes took 0.73 ms, into a reused buffer 0.42 ms (the new
    buffer's page faults)."""

    def __init__(self, block_size: int) -> None:
        self.out = bytearray(block_size)
        self.blob = bytearray(block_size + _ENVELOPE_SLACK)


# Bytes an object may hold beyond its plaintext: either envelope's header, the sealed
# chunk's nonce, tag and inner header (a stored payload is never larger than its plaintext).
_ENVELOPE_SLACK = 64


def read_chunk_into(repo: Repository, cid: bytes, where: str, bufs: ChunkBuffers) -> memoryview:
    """``read_chunk`` into the calling thread's ``bufs``: the checked plaintext as a view
    of one of them, valid until this thread reads its next chunk."""
    try:
        blob = repo.chunks.get_into(cid, bufs.blob)
    except FileNotFoundError:
        raise IntegrityError(f"{where}: chunk {cid.hex()} is missing") from None
    return repo.codec.open_into(blob, cid, bufs.out, f"{where}: chunk {cid.hex()}")


def pick_disk(manifest: Manifest, disk: str | None) -> str:
    if disk is not None:
        if manifest.disk(disk) is None:
            keys = ", ".join(d.key for d in manifest.disks)
            raise UsageError(f"generation {manifest.id} has no disk {disk!r} (disks: {keys})")
        return disk
    if len(manifest.disks) != 1:
        keys = ", ".join(d.key for d in manifest.disks)
        raise UsageError(
            f"VM {manifest.vm_id!r} has several disks; choose one with --disk ({keys})"
        )
    return manifest.disks[0].key


def restore_disk(
    repo: Repository,
    manifest: Manifest,
    disk_key: str,
    target: str | os.PathLike[str],
    *,
    fmt: str = "raw",
    force: bool = False,
    parallel: int = 4,
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
    convert: ImageConverter | None = None,
) -> RestoreResult:
    """``cancel`` is checked between blocks; when set, ExportCancelled is raised and
    the partial output removed. ``convert`` writes qcow2 and vmdk (see the module
    docstring); raw needs none."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}: choose raw, qcow2 or vmdk")
    if fmt != "raw" and convert is None:
        raise UsageError(f"--format {fmt} is written through hypersdk.access.image.restore_image")
    dest = Path(target)
    is_device = dest.exists() and stat.S_ISBLK(dest.stat().st_mode)
    if dest.exists() and not force:
        raise UsageError(f"{dest} exists; use --force to overwrite it")
    if is_device and fmt != "raw":
        raise UsageError("a block device can only receive --format raw")
    if not dest.parent.is_dir():
        raise UsageError(f"folder {dest.parent} does not exist")
    if not repo.storage.local:
        parallel *= 4  # object storage reads wait on the network, not on a core
    with repo.reader():
        index = repo.load_index(manifest, disk_key)
        where = f"{manifest.vm_id}/{manifest.id}/{disk_key}"
        if is_device:
            written = _write_raw(
                repo, index, dest, where, parallel, progress, sparse=False, cancel=cancel
            )
        else:
            written = _restore_file(
                repo, index, dest, where, fmt, force, parallel, progress, cancel, convert
            )
    return RestoreResult(
        vm_id=manifest.vm_id,
        generation=manifest.id,
        disk=disk_key,
        path=str(dest),
        format=fmt,
        capacity_bytes=index.capacity,
        bytes_written=written,
        zero_blocks=index.zero_blocks(),
    )


def _restore_file(
    repo: Repository,
    index: DiskIndex,
    dest: Path,
    where: str,
    fmt: str,
    force: bool,
    parallel: int,
    progress: Callable[[int], None] | None,
    cancel: threading.Event | None,
    convert: ImageConverter | None = None,
) -> int:
    """Write the image in a private temp folder beside ``dest``, then publish it."""
    work = dest.with_name(f".{dest.name}.restore-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(work, DIR_MODE)
        os.chmod(work, DIR_MODE)  # mkdir's mode is filtered by the umask
    except OSError as exc:
        raise RepositoryError(f"cannot write in {dest.parent}: {exc.strerror}") from exc
    try:
        if convert is None:
            image = work / "image.raw"
            written = _write_raw(
                repo, index, image, where, parallel, progress, sparse=True, cancel=cancel
            )
        else:
            image = work / f"image.{fmt}"
            with _WritebackWhile(image):
                written = convert(image, fmt)
            os.chmod(image, FILE_MODE)  # qemu-img creates it by the umask
            fsync_path(image)
        try:
            if force:
                os.replace(image, dest)
            else:
                rename_no_replace(image, dest)
            fsync_dir(dest.parent)  # the name is durable after the bytes (fsynced above)
        except FileExistsError:
            raise ConflictError(
                f"{dest} appeared during the restore and was not replaced; "
                "use --force to overwrite it"
            ) from None
        except OSError as exc:
            raise RepositoryError(f"cannot write {dest}: {exc.strerror}") from exc
        return written
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write_raw(
    repo: Repository,
    index: DiskIndex,
    path: Path,
    where: str,
    parallel: int,
    progress: Callable[[int], None] | None,
    *,
    sparse: bool,
    cancel: threading.Event | None = None,
) -> int:
    flags = os.O_WRONLY | (os.O_CREAT | os.O_EXCL if sparse else 0)
    try:
        fd = os.open(path, flags, FILE_MODE)
        if sparse:
            os.fchmod(fd, FILE_MODE)  # a restored disk is private, whatever the umask
    except OSError as exc:
        raise RepositoryError(f"cannot write {path}: {exc.strerror}") from exc
    block_size = index.block_size
    written = 0
    try:
        if sparse:
            os.ftruncate(fd, index.capacity)

        bufs = ChunkBuffers(block_size)
        zero = memoryview(bytes(block_size)) if not sparse else memoryview(b"")

        def work(block: int, cid: bytes | None) -> int:
            offset = block * block_size
            length = index.block_length(block)
            if cid is None:
                data = zero[:length]
            else:
                data = read_chunk_into(repo, cid, f"{where} @{offset}", bufs)
            if len(data) != length:
                raise IntegrityError(
                    f"{where} @{offset}: chunk holds {len(data)} bytes, the block {length}"
                )
            while data:
                data = data[os.pwrite(fd, data, offset + length - len(data)) :]
            return length

        pending: deque[Future[int]] = deque()
        unflushed = 0

        def collect() -> None:
            nonlocal written, unflushed
            done = pending.popleft().result()
            written += done
            unflushed += done
            if unflushed >= WRITEBACK_BATCH:
                start_writeback(fd, 0, 0)  # what the workers wrote so far
                unflushed = 0
            if progress is not None:
                progress(done)

        def submit(block: int, cid: bytes | None) -> None:
            if cancel is not None and cancel.is_set():
                raise ExportCancelled("restore cancelled; the partial output was removed")
            pending.append(pool.submit(work, block, cid))
            if len(pending) >= parallel * 2:
                collect()

        def zeros(first: int, end: int) -> None:
            """Blocks ``[first, end)`` are zero: a hole in a sparse file (one progress
            step for the whole run, no per-block work), zeros written on a device."""
            if first >= end:
                return
            if sparse:
                if progress is not None:
                    progress(min(end * block_size, index.capacity) - first * block_size)
                return
            for block in range(first, end):
                submit(block, None)

        with ThreadPoolExecutor(parallel, thread_name_prefix="restore") as pool:
            try:
                # Only the blocks with a chunk are visited one by one: the index scan
                # skips runs of zero entries, so a sparse disk costs what its data costs.
                after = 0
                for block, cid in index.chunks():
                    zeros(after, block)
                    submit(block, cid)
                    after = block + 1
                zeros(after, index.blocks)
                while pending:
                    collect()
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
        os.fsync(fd)
    except OSError as exc:
        raise RepositoryError(f"cannot write {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return written


# Bytes written between two ``start_writeback`` calls of a raw restore: large batches
# give the file system large extents; per 1 MiB block it cost more CPU than it saved.
WRITEBACK_BATCH = 64 << 20
# How often the writeback of a file qemu-img writes is started (``_WritebackWhile``).
_WRITEBACK_EVERY = 0.1


class _WritebackWhile:
    """While another process (qemu-img) writes ``path``, start writeback of what it has
    written every ``_WRITEBACK_EVERY`` seconds: the disk writes during the conversion
    instead of all at the closing fsync (measured: that fsync took 0.6 s of a 1 GiB
    qcow2 restore). Only a hint, like ``start_writeback``."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="restore-writeback", daemon=True)

    def __enter__(self) -> None:
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        fd = -1
        try:
            while not self._stop.wait(_WRITEBACK_EVERY):
                if fd < 0:
                    try:  # the private work folder: no one else can put a file here
                        fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
                    except OSError:
                        continue  # not created yet
                start_writeback(fd, 0, 0)
        finally:
            if fd >= 0:
                os.close(fd)
