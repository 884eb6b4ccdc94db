"""Copy generations between repositories (local or S3, plain or encrypted).

For each generation, oldest first: every chunk its indexes name is read from the source
and checked there (``codec.open``: the hash, or the AEAD tag and keyed hash), named the
way the target names chunks (the same SHA-256 between plain repositories; a keyed hash
when either side is encrypted, so the index is rewritten), and sent only when the target
lacks it. Then the indexes, then the manifest, last: a generation exists in the target
only once all of it is there. A copy killed half-way leaves only unreferenced chunks; run
again, it skips the generations the target has and reuses the chunks it already sent
(each checked before reuse, as an export does). The manifest keeps its id, times and
parent, so the copy is the same point in time; only its repository id and index names
change. Export history is not touched: a VM's chain of incrementals continues in the
repository it is exported to.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from hypersdk.engine.catalog import resolve_vm
from hypersdk.errors import ExportCancelled, NotFoundError, UsageError
from hypersdk.repository.chunkstore import ChunkBatch
from hypersdk.repository.index import ENTRY, DiskIndex, Entries, build_index, zeroed_entries
from hypersdk.repository.manifest import DiskRecord, Manifest
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import read_chunk

PARALLEL = 8  # chunks in flight (reads and checks; S3 uploads have their own bound)
WINDOW = 4096  # chunks handed to the pool at a time: bounded memory for huge disks


@dataclass
class CopiedGeneration:
    vm: str
    generation: str
    copied: bool  # False: the target had it already
    chunks_sent: int = 0
    chunks_present: int = 0
    bytes_sent: int = 0  # sealed bytes written to the target
    claimed: set[bytes] = field(default_factory=set, repr=False)  # target ids being sent

    def to_json(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "generation": self.generation,
            "action": "copied" if self.copied else "present",
            "chunks_sent": self.chunks_sent,
            "chunks_present": self.chunks_present,
            "bytes_sent": self.bytes_sent,
        }


@dataclass
class CopyReport:
    source: str
    target: str
    generations: list[CopiedGeneration] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        gens = self.generations
        return {
            "from": self.source,
            "to": self.target,
            "generations": [g.to_json() for g in gens],
            "copied": sum(1 for g in gens if g.copied),
            "present": sum(1 for g in gens if not g.copied),
            "chunks_sent": sum(g.chunks_sent for g in gens),
            "chunks_present": sum(g.chunks_present for g in gens),
            "bytes_sent": sum(g.bytes_sent for g in gens),
        }


def select(source: Repository, vm: str | None, generation: str | None) -> list[Manifest]:
    """What to copy: one generation, one VM's, or every VM's; oldest first."""
    if generation is not None and vm is None:
        raise UsageError("--generation needs --vm")
    vm_ids = [resolve_vm(source, vm)] if vm is not None else source.vm_ids()
    if generation is not None:
        return [source.generation(vm_ids[0], generation)]
    gens = [m for v in vm_ids for m in source.generations(v)]
    if not gens:
        raise NotFoundError(f"{source.location} holds no generations to copy")
    return sorted(gens, key=lambda m: (m.created, m.id))


def copy_generations(
    source: Repository,
    target: Repository,
    manifests: Sequence[Manifest],
    *,
    progress: Callable[[int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> CopyReport:
    """Copy ``manifests`` (from ``select``) into ``target``; see the module's doc."""
    if source.config.id == target.config.id:
        raise UsageError("the source and the target are the same repository")
    if source.config.block_size != target.config.block_size:
        raise UsageError(
            f"{source.location} uses {source.config.block_size}-byte blocks and "
            f"{target.location} {target.config.block_size}-byte ones: a copy needs the same"
        )
    report = CopyReport(source.location, target.location)
    by_vm: dict[str, list[Manifest]] = {}
    for m in manifests:
        by_vm.setdefault(m.vm_id, []).append(m)  # each VM's stay oldest first
    with source.reader():
        for vm_id, gens in by_vm.items():
            # One writer lock and one listing of the target per VM: reading its
            # manifests again for every generation would cost a GET each on S3.
            with target.writer(vm_id):
                have = {g.id for g in target.generations(vm_id)}
                for m in gens:
                    if m.id in have:
                        done = CopiedGeneration(vm_id, m.id, copied=False)
                    else:
                        done = _copy_one(source, target, m, progress, cancel)
                    report.generations.append(done)
    return report


def _copy_one(
    source: Repository,
    target: Repository,
    m: Manifest,
    progress: Callable[[int], None] | None,
    cancel: Callable[[], bool] | None,
) -> CopiedGeneration:
    done = CopiedGeneration(m.vm_id, m.id, copied=True)
    batch = target.chunks.stage()
    renamed: dict[bytes, bytes] = {}  # source id -> target id, once per chunk
    try:
        records = []
        for disk in m.disks:
            index = source.load_index(m, disk.key)
            entries = _translate(source, target, index, batch, renamed, done, progress, cancel)
            key, built = target.build_index(
                m.vm_id,
                m.id,
                disk.key,
                partial(
                    build_index,
                    capacity=index.capacity,
                    block_size=index.block_size,
                    base=None,
                    read_runs=[(0, index.blocks)] if index.blocks else [],
                    read_entries=entries,
                    zero_runs=[],
                ),
            )
            records.append(_record(disk, key, built.sha256))
        target.commit(replace(m, repository_id=target.config.id, disks=records), batch)
    except BaseException:
        batch.discard()
        raise
    return done


def _record(disk: DiskRecord, key: str, sha256: str) -> DiskRecord:
    return replace(disk, index=key, index_sha256=sha256)


def _translate(
    source: Repository,
    target: Repository,
    index: DiskIndex,
    batch: ChunkBatch,
    renamed: dict[bytes, bytes],
    done: CopiedGeneration,
    progress: Callable[[int], None] | None,
    cancel: Callable[[], bool] | None,
) -> Entries:
    """The target's index entries for ``index``, sending each chunk the target lacks.
    Chunks go through a bounded pool: on S3 each is a GET, a HEAD and a PUT, and the
    round trips, not the bytes, set the pace."""
    todo = [cid for cid in dict.fromkeys(c for _, c in index.chunks()) if cid not in renamed]
    lock = threading.Lock()

    def one(cid: bytes) -> bytes:
        if cancel is not None and cancel():
            raise ExportCancelled("copy cancelled; the generation was not committed")
        tid = _send(source, target, cid, batch, done, lock, f"chunk {cid.hex()}")
        if progress is not None:
            progress(index.block_size)
        return tid

    with ThreadPoolExecutor(PARALLEL) as pool:
        for start in range(0, len(todo), WINDOW):
            window = todo[start : start + WINDOW]
            renamed.update(zip(window, pool.map(one, window), strict=True))
    if progress is not None:
        # Blocks that repeat a chunk (or one an earlier disk sent) take no work: count
        # them now, so the total (every non-zero block) is reached.
        progress((index.blocks - index.zero_blocks() - len(todo)) * index.block_size)
    out = zeroed_entries(len(index.entries))  # a sparse disk's entries cost its data
    for block, cid in index.chunks():
        out[block * ENTRY : (block + 1) * ENTRY] = renamed[cid]
    return out


def _send(
    source: Repository,
    target: Repository,
    cid: bytes,
    batch: ChunkBatch,
    done: CopiedGeneration,
    lock: threading.Lock,
    where: str,
) -> bytes:
    if not source.encrypted and not target.encrypted and source.config.hash == target.config.hash:
        # Both name chunks by the same unkeyed hash: a chunk the target holds intact
        # (checked as an export checks before reuse) need not be read from the source.
        stored = target.chunks.read(cid)
        if stored is not None and target.codec.reusable(stored, cid):
            with lock:
                done.chunks_present += 1
            return cid
    plaintext = read_chunk(source, cid, where)  # checked: hash or tag, and its name
    tid = target.codec.chunk_id(plaintext)
    stored = target.chunks.read(tid)
    if stored is not None and target.codec.reusable(stored, tid):
        with lock:
            done.chunks_present += 1
        return tid
    sealed = target.codec.seal_parts(plaintext, tid)
    with lock:
        if tid in done.claimed:  # two source chunks with one target name: sent once
            return tid
        done.claimed.add(tid)
        done.chunks_sent += 1
        done.bytes_sent += sum(map(len, sealed))
    batch.put(tid, sealed)
    return tid
