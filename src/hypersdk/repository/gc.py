"""Garbage collection: remove what no committed generation references.

Runs only under the exclusive repository lock, which no writer holds: a writer that
skipped a chunk because it existed must never see it deleted before its manifest is
committed. Refuses to delete anything if a manifest or an index cannot be read, since
then it cannot know what is referenced.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass

from hypersdk.errors import HyperSDKError, RepositoryError
from hypersdk.repository.layout import Keys
from hypersdk.repository.repository import Repository


@dataclass
class GcReport:
    chunks_kept: int = 0
    chunks_removed: int = 0
    bytes_removed: int = 0
    indexes_removed: int = 0
    temp_files_removed: int = 0


def collect_garbage(repo: Repository, *, dry_run: bool = False) -> GcReport:
    report = GcReport()
    store = repo.storage
    with repo.exclusive():
        damaged = repo.damaged()
        if damaged:
            b = damaged[0]
            raise RepositoryError(
                f"gc refused, nothing removed: generation {b.generation} of VM {b.vm} is "
                f"damaged ({b.problem}); run hyperctl verify"
            )
        referenced: set[bytes] = set()
        live_index_dirs: set[str] = set()
        for vm_id in repo.vm_ids():
            for m in repo.generations(vm_id):
                live_index_dirs.add(Keys.index_dir(vm_id, m.id))
                for d in m.disks:
                    try:
                        index = repo.load_index(m, d.key)
                    except HyperSDKError as exc:
                        raise RepositoryError(
                            f"gc refused, nothing removed: {exc} (run hyperctl verify)"
                        ) from exc
                    referenced.update(cid for _, cid in index.chunks())

        for cid, size in list(repo.chunks.ids()):
            if cid in referenced:
                report.chunks_kept += 1
                continue
            report.chunks_removed += 1
            report.bytes_removed += size
            if not dry_run:
                _remove(repo, Keys.chunk(cid))

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


def _remove(repo: Repository, key: str) -> None:
    with suppress(FileNotFoundError):  # gone already
        repo.storage.delete(key)
