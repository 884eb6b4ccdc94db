"""Write one generation of a VM into a repository.

For each disk the engine plans which blocks to read from the changed extents (runs of
blocks, computed once and shared with the progress total) and runs a bounded thread
pipeline: read -> zero check -> hash -> reuse if stored and intact ->
compress -> write. A stored chunk is reused only after its envelope check (header, length,
CRC32C: one read, no decompression); a chunk file that fails it (a crash left its name
over empty or zeroed bytes) is written again. New chunks get their names only after their
bytes are durable (``ChunkBatch``).
Hashing, zstd and file/socket I/O release the GIL, so the workers use every core. Memory
is bounded by the number of blocks in flight, never by the disk size: the new index is
streamed from its base (the parent's index file for an incremental, zeros for a full
export) with the copied blocks' entries patched in (``index.build_index``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from types import TracebackType

from hypersdk import __version__
from hypersdk.engine.audit import AuditReport, audit_disk
from hypersdk.engine.patch import Patcher
from hypersdk.engine.plan import READ, BlockPlan, plan_blocks
from hypersdk.engine.request import DEFAULT_PARALLEL, ExportHooks
from hypersdk.errors import ExportCancelled, RepositoryError
from hypersdk.providers.base import FrozenDisk, VmIdentity
from hypersdk.providers.factory import canonical_locator
from hypersdk.repository.chunkstore import ChunkBatch
from hypersdk.repository.index import ENTRY, IndexSource, build_index
from hypersdk.repository.manifest import (
    DiskRecord,
    Manifest,
    iso,
    new_generation_id,
    utc_now,
)
from hypersdk.repository.repository import Repository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Run:
    parallel: int
    hooks: ExportHooks

    @property
    def cancelled(self) -> bool:
        return self.hooks.cancel is not None and self.hooks.cancel.is_set()


@dataclass
class DiskStats:
    bytes_read: int = 0
    bytes_stored: int = 0
    chunks_new: int = 0
    chunks_reused: int = 0
    chunks_rewritten: int = 0  # stored under their name but damaged: written again
    zero_blocks: int = 0


@dataclass
class GenerationResult:
    manifest: Manifest
    duration_s: float
    disks: dict[str, DiskStats] = field(default_factory=dict)
    audit: AuditReport | None = None

    @property
    def bytes_read(self) -> int:
        return sum(d.bytes_read for d in self.disks.values())

    @property
    def bytes_stored(self) -> int:
        return sum(d.bytes_stored for d in self.disks.values())


def plan_disks(disks: Sequence[FrozenDisk], block_size: int) -> list[BlockPlan]:
    """Each disk's block plan, in order. Computed once per disk and shared: the progress
    total is ``sum(p.read_bytes() for p in plans)``, and ``write`` takes the same plans."""
    return [plan_blocks(d.capacity_bytes, block_size, d.changed) for d in disks]


class GenerationWriter:
    """Holds the VM's writer lock from ``__enter__`` to ``__exit__``; ``write`` commits one
    generation. Enter it before opening a provider session so that a second writer fails
    before it touches the hypervisor."""

    def __init__(self, repo: Repository, vm: VmIdentity) -> None:
        self.repo = repo
        self.vm = vm
        self._lock = repo.writer(vm.vm_id)
        self.stale_holder: dict[str, object] = {}

    def __enter__(self) -> GenerationWriter:
        self.stale_holder = self._lock.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.__exit__(exc_type, exc, tb)

    def write(
        self,
        disks: Sequence[FrozenDisk],
        *,
        parent: Manifest | None,
        reason: str,
        parallel: int = DEFAULT_PARALLEL,
        hooks: ExportHooks | None = None,
        plans: Sequence[BlockPlan] | None = None,
        audit: Manifest | AuditReport | None = None,
    ) -> GenerationResult:
        """Write and commit a generation; ``parent`` makes it incremental. ``parallel``
        comes from a checked ``ExportRequest`` (or a test); it only sizes the pool.
        ``plans`` (from ``plan_disks``, one per disk) saves planning the disks again.
        ``audit``: the generation a CBT audit compares with (every disk then carries
        ``reported`` extents), or the report of an audit that could not be made; the
        manifest records either."""
        opts = _Run(parallel, hooks or ExportHooks())
        repo = self.repo
        if plans is None:
            plans = plan_disks(disks, repo.config.block_size)
        elif len(plans) != len(disks) or any(
            p.capacity != d.capacity_bytes or p.block_size != repo.config.block_size
            for p, d in zip(plans, disks, strict=False)
        ):
            raise ValueError("the block plans do not match the disks")
        if parent is not None:
            self._check_parent(parent, disks)
        if isinstance(audit, Manifest):
            if parent is not None or any(d.reported is None for d in disks):
                raise ValueError(
                    "an audit reads every block and needs each disk's reported extents"
                )
            self._check_parent(audit, disks)
        started = utc_now()
        t0 = time.monotonic()
        stats: dict[str, DiskStats] = {}
        batch = repo.chunks.stage()
        try:
            manifest, report = self._write(
                disks, plans, parent, reason, opts, batch, stats, started, t0, audit
            )
            if opts.cancelled:
                raise ExportCancelled("export cancelled; nothing was committed")
            repo.commit(manifest, batch)
        except BaseException:
            batch.discard()  # temp files not yet named; a crash leaves them for gc
            raise
        return GenerationResult(manifest, time.monotonic() - t0, stats, report)

    def _write(
        self,
        disks: Sequence[FrozenDisk],
        plans: Sequence[BlockPlan],
        parent: Manifest | None,
        reason: str,
        opts: _Run,
        batch: ChunkBatch,
        stats: dict[str, DiskStats],
        started: datetime,
        t0: float,
        audit: Manifest | AuditReport | None,
    ) -> tuple[Manifest, AuditReport | None]:
        """Store every disk's chunks and index; returns the manifest to commit."""
        repo, block_size = self.repo, self.repo.config.block_size
        gen_id = new_generation_id(started)
        records: list[DiskRecord] = []
        report = audit if isinstance(audit, AuditReport) else None
        if isinstance(audit, Manifest):
            report = AuditReport(performed=True, previous=audit.id)
        for disk, plan in zip(disks, plans, strict=True):
            # The parent's index is checked now (header) and streamed at the end; it is
            # never held whole in memory.
            base = repo.index_source(parent, disk.key) if parent is not None else None
            entries, disk_stats = _copy_disk(repo, disk, plan, opts, batch, base)
            if isinstance(audit, Manifest) and report is not None and disk.reported is not None:
                report.disks.append(
                    audit_disk(
                        disk.key, plan, entries, repo.load_index(audit, disk.key), disk.reported
                    )
                )
            rel, built = repo.build_index(
                self.vm.vm_id,
                gen_id,
                disk.key,
                partial(
                    build_index,
                    capacity=disk.capacity_bytes,
                    block_size=block_size,
                    base=base,
                    read_runs=plan.read,
                    read_entries=entries,
                    zero_runs=plan.zero,
                ),
            )
            disk_stats.zero_blocks = built.zero_blocks
            stats[disk.key] = disk_stats
            records.append(
                DiskRecord(
                    key=disk.key,
                    capacity_bytes=disk.capacity_bytes,
                    change_id=disk.change_id,
                    index=rel,
                    index_sha256=built.sha256,
                    blocks=built.blocks,
                    zero_blocks=disk_stats.zero_blocks,
                    bytes_read=disk_stats.bytes_read,
                    bytes_stored=disk_stats.bytes_stored,
                    chunks_new=disk_stats.chunks_new,
                    chunks_reused=disk_stats.chunks_reused,
                    path=disk.path,
                    backing_info=disk.backing_info,
                )
            )
        duration = time.monotonic() - t0
        read = sum(s.bytes_read for s in stats.values())
        manifest = Manifest(
            id=gen_id,
            vm_id=self.vm.vm_id,
            vm_name=self.vm.name,
            platform=self.vm.platform,
            locator=canonical_locator(self.vm.locator) if self.vm.locator else "",
            repository_id=repo.config.id,
            parent=parent.id if parent is not None else None,
            type="incremental" if parent is not None else "full",
            reason=reason,
            block_size=block_size,
            created=iso(started),
            completed=iso(utc_now()),
            tool_version=__version__,
            disks=records,
            stats={
                "bytes_read": read,
                "bytes_stored": sum(s.bytes_stored for s in stats.values()),
                "chunks_new": sum(s.chunks_new for s in stats.values()),
                "chunks_reused": sum(s.chunks_reused for s in stats.values()),
                "zero_blocks": sum(r.zero_blocks for r in records),
                "duration_s": round(duration, 3),
                "throughput_mib_s": round(read / duration / 2**20, 1) if duration else 0.0,
            },
            audit=report.to_json() if report is not None else None,
        )
        return manifest, report

    def _check_parent(self, parent: Manifest, disks: Sequence[FrozenDisk]) -> None:
        """Last guard against chaining onto the wrong base (the decision logic decides
        first; this only refuses what would silently corrupt the chain)."""
        if parent.vm_id != self.vm.vm_id:
            raise RepositoryError(
                f"refusing incremental: parent {parent.id} belongs to VM {parent.vm_id!r}"
            )
        if parent.block_size != self.repo.config.block_size:
            raise RepositoryError("refusing incremental: parent has another block size")
        parent_disks = {d.key: d.capacity_bytes for d in parent.disks}
        current = {d.key: d.capacity_bytes for d in disks}
        if parent_disks != current:
            raise RepositoryError(
                f"refusing incremental: disks changed since generation {parent.id} "
                f"(was {parent_disks}, now {current})"
            )


class _BlockReads:
    """How the workers get the bytes of a block.

    A reader that can start a read and wait for it later (NBD: ``start_read``) gets each
    block's read sent by the producer, in disk order, as soon as the block enters the
    pipeline's window: the server always has the next reads queued while the workers
    hash and compress, instead of each worker waiting for its read between blocks. The
    bytes land in a buffer of a small free list, reused once the block is collected: no
    copy out of it and no fresh memory per block. Nothing keeps a block's bytes after
    its work: the hash, the zero check and the codec (which returns new bytes) only look
    at them. Other readers, and blocks the ``Patcher`` builds from their parent (vSphere),
    are read by the worker itself.
    """

    def __init__(self, disk: FrozenDisk, block_size: int, patcher: Patcher) -> None:
        self._reader = disk.reader
        self._patcher = patcher
        self._start: Callable[[int, memoryview], Callable[[], None]] | None = getattr(
            disk.reader, "start_read", None
        )
        self._block_size = block_size
        self._free: list[bytearray] = []

    def begin(
        self, block: int, length: int
    ) -> tuple[Callable[[], bytes | memoryview], bytearray | None]:
        """(what a worker calls for the bytes, the buffer to ``release`` once the block
        was collected, or None)."""
        offset = block * self._block_size
        if self._patcher.patches(block):  # the parent's bytes and the changed ones
            return partial(self._patcher.read, block, length), None
        if self._start is None:
            return partial(self._reader.pread, offset, length), None
        buf = self._free.pop() if self._free else bytearray(self._block_size)
        view = memoryview(buf)[:length]
        wait = self._start(offset, view)

        def get() -> memoryview:
            wait()
            return view

        return get, buf

    def release(self, buf: bytearray | None) -> None:
        if buf is not None:
            self._free.append(buf)


def _copy_disk(
    repo: Repository,
    disk: FrozenDisk,
    plan: BlockPlan,
    opts: _Run,
    batch: ChunkBatch,
    base: IndexSource | None = None,
) -> tuple[bytearray, DiskStats]:
    """Read and store the plan's blocks; returns their index entries (32 bytes each, in
    the order of ``plan.read``) and the counters. Only the planned blocks are visited,
    never the whole disk."""
    block_size = repo.config.block_size
    stats = DiskStats()
    entries = bytearray(plan.count(READ) * ENTRY)
    slot = 0  # results are collected in submission order: disk order

    zero_block = bytes(block_size)
    seen: set[bytes] = set()
    seen_lock = threading.Lock()
    patcher = Patcher(repo, disk, plan, base)  # small changes: read them, patch the parent's
    reads = _BlockReads(disk, block_size, patcher)

    def work(
        block: int, get: Callable[[], bytes | memoryview]
    ) -> tuple[int, bytes | None, int, int]:
        """Returns (block, chunk id or None, bytes stored, 0 reused / 1 new / 2 rewritten)."""
        length = plan.length(block)
        data = get()
        if len(data) != length:
            raise RepositoryError(
                f"disk {disk.key}: short read at offset {block * block_size} "
                f"({len(data)} of {length} bytes)"
            )
        if data == (zero_block if length == block_size else bytes(length)):
            return block, None, 0, 0
        cid = repo.codec.chunk_id(data)
        with seen_lock:
            claimed = cid in seen
            seen.add(cid)
        if claimed or batch.staged(cid):
            return block, cid, 0, 0
        # Never trust a chunk because its file exists: check it before reusing it.
        stored = repo.chunks.read(cid)
        if stored is not None and repo.codec.reusable(stored, cid):
            return block, cid, 0, 0
        if stored is not None:
            log.warning("chunk %s is damaged on disk; writing it again", cid.hex())
        sealed = repo.codec.seal_parts(data, cid)
        batch.put(cid, sealed)
        return block, cid, sum(map(len, sealed)), 1 if stored is None else 2

    def collect(fut: Future[tuple[int, bytes | None, int, int]]) -> None:
        nonlocal slot
        block, cid, stored, new = fut.result()  # re-raises a worker's error
        length = plan.length(block)
        if cid is not None:
            entries[slot * ENTRY : (slot + 1) * ENTRY] = cid
        slot += 1
        stats.bytes_read += length
        if cid is None:
            pass
        elif new:
            stats.chunks_new += 1
            stats.bytes_stored += stored
            if new == 2:
                stats.chunks_rewritten += 1
        else:
            stats.chunks_reused += 1
        if opts.hooks.progress is not None:
            opts.hooks.progress(length)

    window = opts.parallel * 2
    pending: deque[tuple[Future[tuple[int, bytes | None, int, int]], bytearray | None]] = deque()

    def collect_first() -> None:
        fut, buf = pending.popleft()
        collect(fut)
        reads.release(buf)  # only after success: a failed block's read may still land

    with ThreadPoolExecutor(opts.parallel, thread_name_prefix=f"export-{disk.key}") as pool:
        try:
            for block in plan.blocks(READ):
                if opts.cancelled:
                    raise ExportCancelled("export cancelled; nothing was committed")
                get, buf = reads.begin(block, plan.length(block))
                pending.append((pool.submit(work, block, get), buf))
                if len(pending) >= window:
                    collect_first()
            while pending:
                collect_first()
        except BaseException:
            for fut, _ in pending:
                fut.cancel()
            raise
    stats.bytes_read -= patcher.bytes_not_read  # what was read from the disk
    return entries, stats
