"""Garbage collection: remove what no committed generation references.

Runs only under the exclusive repository lock, which no writer holds: a writer that
skipped a chunk because it existed must never see it deleted before its manifest is
committed. Refuses to delete anything if a manifest or an index cannot be read, since
then it cannot know what is referenced.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hypersdk.errors import HyperSDKError, RepositoryError
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
                live_index_dirs.add(str(repo.layout.index_dir(vm_id, m.id)))
                for d in m.disks:
                    try:
                        index = repo.load_index(m, d.key)
                    except HyperSDKError as exc:
                        raise RepositoryError(
                            f"gc refused, nothing removed: {exc} (run hyperctl verify)"
                        ) from exc
                    referenced.update(cid for _, cid in index.chunks())

        for cid, path in list(repo.chunks.all()):
            if cid in referenced:
                report.chunks_kept += 1
                continue
            report.chunks_removed += 1
            report.bytes_removed += path.stat().st_size
            if not dry_run:
                path.unlink()

        # Index folders of generations whose manifest never got written.
        for vm_dir in repo.layout.vms.iterdir() if repo.layout.vms.exists() else []:
            indexes = vm_dir / "indexes"
            if not indexes.is_dir():
                continue
            for gen_dir in indexes.iterdir():
                if str(gen_dir) not in live_index_dirs:
                    report.indexes_removed += 1
                    if not dry_run:
                        shutil.rmtree(gen_dir)

        temps = list(repo.chunks.leftovers())
        if repo.layout.tmp.exists():
            temps += [Path(e.path) for e in os.scandir(repo.layout.tmp)]
        for temp in temps:
            report.temp_files_removed += 1
            if not dry_run:
                temp.unlink()
    return report
