"""Restore into an existing disk, writing only the blocks that differ.

Two ways to know what differs:

* ``since`` (the target holds generation F; G is restored): the blocks whose index
  entries differ between F and G. Nothing is read from the target; the user vouches that
  it holds F (``compare`` is the way when that is not known).
* ``compare``: every block of the target is read and named with the repository's own
  chunk naming (``repo.codec.chunk_id``, a keyed hash in an encrypted repository) and
  compared with G's entry; a zero block is compared with zeros, without hashing.

A block that differs is written from G: its chunk, read and checked through
``restore.read_chunk``, or zeros (``write_zeroes``: a hole punched in a file, NBD
WRITE_ZEROES on an export) when G's block is zero. The target ends byte-identical to G.

The target is anything with the small ``BlockTarget`` interface: ``FileTarget`` here (a
raw file or a block device); the engine adds NBD exports (a qcow2 file, a QEMU disk). The
repository lock is held shared throughout, so gc cannot delete a chunk being read.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, Protocol, TypeVar

from hypersdk.errors import ExportCancelled, IntegrityError, RepositoryError, UsageError
from hypersdk.repository.index import ENTRY, ZERO_ENTRY, DiskIndex
from hypersdk.repository.manifest import Manifest
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import read_chunk

_P = ParamSpec("_P")
_R = TypeVar("_R")
_WINDOW = 1024  # index entries compared at once (32 KiB) before looking block by block


class BlockTarget(Protocol):
    """What an incremental restore writes into. Calls may come from several threads."""

    @property
    def size(self) -> int: ...

    def pread(self, offset: int, length: int) -> bytes: ...

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def write_zeroes(self, offset: int, length: int) -> None: ...

    def flush(self) -> None: ...


@dataclass
class IntoResult:
    """What ``restore_into`` did; ``to_json`` is the documented ``--json`` object."""

    vm_id: str
    generation: str
    since: str | None  # F, or None when the target was compared
    mode: str  # "since" or "compare"
    disk: str
    target: str
    target_format: str  # "raw", "block-device", "qcow2" or "qemu"
    capacity_bytes: int
    block_size: int
    blocks_total: int
    blocks_changed: int
    blocks_zeroed: int  # of blocks_changed: written as zeros (G's block is zero)
    bytes_read_repository: int  # chunk bytes (decoded) read from the repository
    bytes_read_target: int
    bytes_written: int  # the changed blocks' bytes, zeroed ones included
    resized_from: int | None  # the target's size before, when it was resized
    seconds: float

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items()}


def changed_blocks(old: DiskIndex, new: DiskIndex) -> Iterator[int]:
    """The blocks of ``new`` whose entry differs from ``old``'s (a block past ``old``'s
    end counts as zero there). Equal windows are skipped with one comparison."""
    a, b = old.entries, new.entries
    n = new.blocks
    shared = min(old.blocks, n)
    step = _WINDOW * ENTRY
    for start in range(0, shared * ENTRY, step):
        end = min(start + step, shared * ENTRY)
        if a[start:end] == b[start:end]:
            continue
        for pos in range(start, end, ENTRY):
            if a[pos : pos + ENTRY] != b[pos : pos + ENTRY]:
                yield pos // ENTRY
    zero = bytes(step)
    for start in range(shared * ENTRY, n * ENTRY, step):
        end = min(start + step, n * ENTRY)
        if b[start:end] == zero[: end - start]:
            continue
        for pos in range(start, end, ENTRY):
            if b[pos : pos + ENTRY] != ZERO_ENTRY:
                yield pos // ENTRY


@dataclass
class IntoPlan:
    """The blocks to consider, known before a byte is written (``progress_total`` sizes
    a progress bar): the changed blocks for ``since``, every block for ``compare``."""

    repo: Repository
    manifest: Manifest
    disk: str
    index: DiskIndex
    since: Manifest | None
    since_capacity: int | None
    blocks: list[int] | None  # None: compare every block
    progress_total: int


def plan_into(repo: Repository, manifest: Manifest, disk: str, since: Manifest | None) -> IntoPlan:
    """Load G's index (and F's); F must be of the same VM, hold the same disk and use
    the same block size."""
    with repo.reader():
        index = repo.load_index(manifest, disk)
        if since is None:
            return IntoPlan(repo, manifest, disk, index, None, None, None, index.capacity)
        if since.vm_id != manifest.vm_id:
            raise UsageError(
                f"--since {since.id} is a generation of VM {since.vm_id}, not of {manifest.vm_id}"
            )
        if since.disk(disk) is None:
            raise UsageError(
                f"generation {since.id} has no disk {disk!r}: the target cannot hold it; "
                "use --compare"
            )
        old = repo.load_index(since, disk)
    if old.block_size != index.block_size:
        raise UsageError(
            f"generations {since.id} and {manifest.id} use different block sizes "
            f"({old.block_size} and {index.block_size}); use --compare"
        )
    blocks = list(changed_blocks(old, index))
    total = sum(index.block_length(b) for b in blocks)
    return IntoPlan(repo, manifest, disk, index, since, old.capacity, blocks, total)


def restore_into(
    plan: IntoPlan,
    target: BlockTarget,
    *,
    target_name: str,
    target_format: str,
    resize: Callable[[int], None] | None = None,
    parallel: int = 4,
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> IntoResult:
    """Bring ``target`` to the plan's generation. ``resize`` (a raw file's truncate) is
    used when F and G differ in size; without it a size mismatch is refused."""
    started = time.monotonic()
    index = plan.index
    resized_from = _check_size(plan, target, target_name, resize)
    stats = _Stats()
    where = f"{plan.manifest.vm_id}/{plan.manifest.id}/{plan.disk}"
    zero_block = bytes(index.block_size)

    def write(block: int, cid: bytes | None) -> None:
        offset = block * index.block_size
        length = index.block_length(block)
        if cid is None:
            target.write_zeroes(offset, length)
            stats.add(changed=1, zeroed=1, written=length)
            return
        data = read_chunk(plan.repo, cid, f"{where} @{offset}")
        if len(data) != length:
            raise IntegrityError(
                f"{where} @{offset}: chunk holds {len(data)} bytes, the block {length}"
            )
        target.pwrite(offset, data)
        stats.add(changed=1, written=length, read_repo=length)

    def since_work(block: int) -> int:
        write(block, index.get(block))
        return index.block_length(block)

    def compare_work(block: int) -> int:
        offset = block * index.block_size
        length = index.block_length(block)
        data = target.pread(offset, length)
        stats.add(read_target=len(data))
        cid = index.get(block)
        if cid is None:
            same = memoryview(data) == memoryview(zero_block)[:length]
        else:
            same = len(data) == length and plan.repo.codec.chunk_id(data) == cid
        if not same:
            write(block, cid)
        return length

    blocks = range(index.blocks) if plan.blocks is None else plan.blocks
    work = compare_work if plan.blocks is None else since_work
    with plan.repo.reader():
        _run(blocks, work, parallel, progress, cancel)
        target.flush()
    return IntoResult(
        vm_id=plan.manifest.vm_id,
        generation=plan.manifest.id,
        since=plan.since.id if plan.since is not None else None,
        mode="compare" if plan.blocks is None else "since",
        disk=plan.disk,
        target=target_name,
        target_format=target_format,
        capacity_bytes=index.capacity,
        block_size=index.block_size,
        blocks_total=index.blocks,
        blocks_changed=stats.changed,
        blocks_zeroed=stats.zeroed,
        bytes_read_repository=stats.read_repo,
        bytes_read_target=stats.read_target,
        bytes_written=stats.written,
        resized_from=resized_from,
        seconds=round(time.monotonic() - started, 3),
    )


def _check_size(
    plan: IntoPlan, target: BlockTarget, name: str, resize: Callable[[int], None] | None
) -> int | None:
    have = target.size
    if not check_size(plan, have, name, resizable=resize is not None):
        return None
    assert resize is not None
    resize(plan.index.capacity)
    return have


def check_size(plan: IntoPlan, have: int, name: str, *, resizable: bool) -> bool:
    """Whether a target of ``have`` bytes must be resized to G's size first; a size that
    cannot be right is a UsageError: with ``since`` the target must be F's size (else it
    does not hold F), with ``compare`` G's."""
    want = plan.index.capacity
    if plan.since is not None:
        held = plan.since_capacity
        if have != held:
            raise UsageError(
                f"{name} is {have} bytes but generation {plan.since.id}'s disk is {held}: "
                "it does not hold that generation; use --compare"
            )
    if have == want:
        return False
    if plan.since is None:
        raise UsageError(
            f"{name} is {have} bytes but generation {plan.manifest.id}'s disk is {want}: "
            "--compare needs a target of the same size"
        )
    if not resizable:
        raise UsageError(
            f"generation {plan.manifest.id}'s disk is {want} bytes but {name} is {have} "
            "and cannot be resized"
        )
    return True


class _Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.changed = self.zeroed = self.written = self.read_repo = self.read_target = 0

    def add(
        self,
        *,
        changed: int = 0,
        zeroed: int = 0,
        written: int = 0,
        read_repo: int = 0,
        read_target: int = 0,
    ) -> None:
        with self._lock:
            self.changed += changed
            self.zeroed += zeroed
            self.written += written
            self.read_repo += read_repo
            self.read_target += read_target


def _run(
    blocks: range | list[int],
    work: Callable[[int], int],
    parallel: int,
    progress: Callable[[int], None] | None,
    cancel: threading.Event | None,
) -> None:
    """``work`` on every block with ``parallel`` threads and a bounded queue; the first
    error stops the run (the rest is cancelled) and is raised."""
    pending: deque[Future[int]] = deque()

    def settle() -> None:
        done = pending.popleft().result()
        if progress is not None:
            progress(done)

    with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="restore-into") as pool:
        try:
            for block in blocks:
                if cancel is not None and cancel.is_set():
                    raise ExportCancelled(
                        "restore cancelled; the target holds a mix of both generations: "
                        "run it again (--compare brings any state to the generation)"
                    )
                pending.append(pool.submit(work, block))
                if len(pending) >= parallel * 2:
                    settle()
            while pending:
                settle()
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


# --- a raw file or a block device ----------------------------------------------------

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


class FileTarget:
    """An existing raw image file or block device, opened read-write without following
    a symlink in its last component and never created. Zeros are a punched hole in a
    file (it stays sparse), written zeros on a device."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UsageError(f"{self.path} does not exist (--to needs an existing disk)") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UsageError(f"{self.path} is a symbolic link; name the disk itself") from None
            raise RepositoryError(f"cannot open {self.path}: {exc.strerror}") from exc
        try:
            mode = os.fstat(self._fd).st_mode
            self.is_device = stat.S_ISBLK(mode)
            if not (self.is_device or stat.S_ISREG(mode)):
                raise UsageError(f"{self.path} is neither a file nor a block device")
            self._size = os.lseek(self._fd, 0, os.SEEK_END)
        except BaseException:
            os.close(self._fd)
            raise
        self._punch = not self.is_device

    @property
    def size(self) -> int:
        return self._size

    @property
    def format(self) -> str:
        return "block-device" if self.is_device else "raw"

    def resize(self, size: int) -> None:
        """Only a regular file can change size (a device's size is the device's)."""
        if self.is_device:
            raise UsageError(f"block device {self.path} is {self._size} bytes, not {size}")
        self._io(os.ftruncate, self._fd, size)
        self._size = size

    def pread(self, offset: int, length: int) -> bytes:
        data: bytes = self._io(os.pread, self._fd, length, offset)
        if len(data) != length:
            raise RepositoryError(f"{self.path}: short read at offset {offset}")
        return data

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        pos = offset
        while view:
            n: int = self._io(os.pwrite, self._fd, view, pos)
            view, pos = view[n:], pos + n

    def write_zeroes(self, offset: int, length: int) -> None:
        if self._punch:
            flags = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
            if _fallocate(self._fd, flags, offset, length) == 0:
                return
            if ctypes.get_errno() not in (errno.EOPNOTSUPP, errno.ENOSYS):
                err = ctypes.get_errno()
                raise RepositoryError(f"cannot write {self.path}: {os.strerror(err)}")
            self._punch = False  # this file system cannot punch holes: write zeros
        zeros = bytes(min(length, 1 << 20))
        pos = offset
        while pos < offset + length:
            n = min(len(zeros), offset + length - pos)
            self.pwrite(pos, memoryview(zeros)[:n])
            pos += n

    def flush(self) -> None:
        self._io(os.fsync, self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _io(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            raise RepositoryError(f"{self.path}: {exc.strerror}") from exc
