"""Check that every selected generation can be restored, byte for byte.

Reads every index (checksum, header, size), then every chunk the indexes reference once,
decompressing and re-hashing it. A damaged chunk is reported for every place it is used:
VM, generation, disk and the byte ranges it fills. A damaged manifest is reported too
(disk empty, naming its VM folder and file name) and never stops the others being checked.
The repository lock is held shared, so gc cannot delete what is being checked.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from hypersdk.errors import ExportCancelled, HyperSDKError, IntegrityError
from hypersdk.repository.index import DiskIndex
from hypersdk.repository.manifest import Manifest
from hypersdk.repository.repository import BadManifest, Repository
from hypersdk.repository.restore import read_chunk


@dataclass
class Damage:
    vm: str
    generation: str
    disk: str  # empty when the manifest itself is damaged
    problem: str
    chunk: str = ""  # hex id, empty when the index itself is damaged
    ranges: list[tuple[int, int]] = field(default_factory=list)  # [start, end) byte offsets


@dataclass
class VerifyReport:
    generations: int = 0
    disks: int = 0
    chunks_checked: int = 0
    bytes_checked: int = 0
    damage: list[Damage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damage


def select(repo: Repository, vm: str | None, generation: str | None) -> list[Manifest]:
    """The readable manifests to check; raises IntegrityError when ``generation`` names a
    damaged one (``select_with_damage`` reports it instead)."""
    vms = [vm] if vm is not None else repo.vm_ids()
    out: list[Manifest] = []
    for vm_id in vms:
        if generation is not None:
            out.append(repo.generation(vm_id, generation))
        else:
            out.extend(repo.generations(vm_id))
    return out


def select_with_damage(
    repo: Repository, vm: str | None, generation: str | None
) -> tuple[list[Manifest], list[BadManifest]]:
    """The readable manifests to check and the damaged ones in the same selection."""
    damaged = repo.damaged(vm)
    if generation is None or vm is None:
        return select(repo, vm, generation), damaged
    try:
        return [repo.generation(vm, generation)], []
    except IntegrityError:
        # The generation asked for is damaged (for "latest": a newer one is): report it.
        good = {m.id for m in repo.generations(vm)}
        newest = max(good, default="")
        hit = [
            b
            for b in damaged
            if b.generation == generation or (generation == "latest" and b.generation > newest)
        ]
        if not hit:
            raise
        return [], hit


def verify(
    repo: Repository,
    manifests: list[Manifest],
    *,
    parallel: int = 4,
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
    damaged: Sequence[BadManifest] = (),
) -> VerifyReport:
    """``cancel`` is checked between chunks; when set, ExportCancelled is raised.
    ``damaged`` manifests (from ``select_with_damage``) are reported as damage."""
    if not repo.storage.local:
        parallel *= 4  # object storage reads wait on the network, not on a core
    with repo.reader():
        return _verify(repo, manifests, parallel, progress, cancel, damaged)


def _verify(
    repo: Repository,
    manifests: list[Manifest],
    parallel: int,
    progress: Callable[[int], None] | None,
    cancel: threading.Event | None,
    damaged: Sequence[BadManifest],
) -> VerifyReport:
    report = VerifyReport(generations=len(manifests) + len(damaged))
    for b in damaged:
        report.damage.append(Damage(b.vm, b.generation, "", b.problem))
    indexes: list[tuple[Manifest, str, DiskIndex]] = []
    for m in manifests:
        for d in m.disks:
            report.disks += 1
            try:
                indexes.append((m, d.key, repo.load_index(m, d.key)))
            except HyperSDKError as exc:
                report.damage.append(Damage(m.vm_id, m.id, d.key, str(exc)))

    unique: set[bytes] = set()
    for _, _, index in indexes:
        unique.update(cid for _, cid in index.chunks())

    bad: dict[bytes, str] = {}

    def check(cid: bytes) -> tuple[bytes, int, str]:
        try:
            return cid, len(read_chunk(repo, cid, "chunk")), ""
        except HyperSDKError as exc:
            return cid, 0, str(exc).removeprefix("chunk: ")

    pending: deque[Future[tuple[bytes, int, str]]] = deque()

    def collect(fut: Future[tuple[bytes, int, str]]) -> None:
        cid, size, problem = fut.result()
        report.chunks_checked += 1
        report.bytes_checked += size
        if problem:
            bad[cid] = problem
        if progress is not None:
            progress(1)

    with ThreadPoolExecutor(parallel, thread_name_prefix="verify") as pool:
        for cid in sorted(unique):
            if cancel is not None and cancel.is_set():
                for fut in pending:
                    fut.cancel()
                raise ExportCancelled("verification cancelled")
            pending.append(pool.submit(check, cid))
            if len(pending) >= parallel * 4:
                collect(pending.popleft())
        while pending:
            collect(pending.popleft())

    if bad:
        for m, key, index in indexes:
            found: dict[bytes, Damage] = {}
            for block, cid in index.chunks():
                if cid in bad:
                    dmg = found.get(cid)
                    if dmg is None:
                        dmg = found[cid] = Damage(m.vm_id, m.id, key, bad[cid], cid.hex())
                        report.damage.append(dmg)
                    start = block * index.block_size
                    end = start + index.block_length(block)
                    if dmg.ranges and dmg.ranges[-1][1] == start:
                        dmg.ranges[-1] = (dmg.ranges[-1][0], end)
                    else:
                        dmg.ranges.append((start, end))
    return report
