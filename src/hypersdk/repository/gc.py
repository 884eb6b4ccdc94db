"""Garbage collection: remove what no committed generation references.

Runs only under the exclusive repository lock, which no writer holds: a writer that
skipped a chunk because it existed must never see it deleted before its manifest is
committed. Refuses to delete anything if a manifest or an index cannot be read, since
then it cannot know what is referenced.

Mark and sweep with bounded memory: every index's chunk ids go to a ``MarkSet`` spilled
to disk in 256 partitions by first byte; the sweep then walks the chunk store one
partition (one ``data/xx/`` folder or prefix) at a time against that partition's marks.
Memory is one index plus 1/256 of the marks, whatever the number of chunks
(bench/bench_gc.py measures it).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from hypersdk.errors import HyperSDKError, RepositoryError
from hypersdk.repository.layout import Keys
from hypersdk.repository.markset import PARTITIONS, MarkSet
from hypersdk.repository.repository import Repository

Progress = Callable[[str, int, int], None]  # (phase "mark" or "sweep", done, total)


@dataclass
class GcReport:
    chunks_kept: int = 0
    chunks_removed: int = 0
    bytes_removed: int = 0
    indexes_removed: int = 0
    temp_files_removed: int = 0


def collect_garbage(
    repo: Repository, *, dry_run: bool = False, progress: Progress | None = None
) -> GcReport:
    report = GcReport()
    store = repo.storage
    with repo.exclusive():
        manifests, damaged = repo.scan()
        if damaged:
            b = damaged[0]
            raise RepositoryError(
                f"gc refused, nothing removed: generation {b.generation} of VM {b.vm} is "
                f"damaged ({b.problem}); run hyperctl verify"
            )
        live_index_dirs: set[str] = set()
        with MarkSet(_spill_folder(repo)) as marks:
            for done, m in enumerate(manifests, 1):
                live_index_dirs.add(Keys.index_dir(m.vm_id, m.id))
                for d in m.disks:
                    try:
                        marks.add_index(repo.load_index(m, d.key))
                    except HyperSDKError as exc:
                        raise RepositoryError(
                            f"gc refused, nothing removed: {exc} (run hyperctl verify)"
                        ) from exc
                if progress is not None:
                    progress("mark", done, len(manifests))
            for first in range(PARTITIONS):
                keep = marks.partition(first)
                for cid, size in list(repo.chunks.ids(first)):
                    if cid in keep:
                        report.chunks_kept += 1
                        continue
                    report.chunks_removed += 1
                    report.bytes_removed += size
                    if not dry_run:
                        _remove(repo, Keys.chunk(cid))
                if progress is not None:
                    progress("sweep", first + 1, PARTITIONS)

        # Index folders of generations whose manifest never got written.
        for vm in store.folders(Keys.vms):
            indexes = f"{Keys.vms}{vm}/indexes/"
            for gen in store.folders(indexes):
                if f"{indexes}{gen}/" not in live_index_dirs:
                    report.indexes_removed += 1
                    if not dry_run:
                        store.delete_folder(f"{indexes}{gen}/")

        temps = [str(k) for k in repo.chunks.leftovers()]
        temps += [i.key for i in store.list(Keys.tmp)]
        for temp in temps:
            report.temp_files_removed += 1
            if not dry_run:
                _remove(repo, temp)
        store.sync()
    return report


def _spill_folder(repo: Repository) -> Path:
    """Where the marks spill: the repository's own tmp folder when it is local (same
    disk, private), else the system's temporary folder."""
    if repo.storage.local:
        return repo.layout.tmp
    return Path(tempfile.gettempdir())


def _remove(repo: Repository, key: str) -> None:
    with suppress(FileNotFoundError):  # gone already
        repo.storage.delete(key)
