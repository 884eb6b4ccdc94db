"""Prune: remove the generations a retention policy does not keep, then collect garbage.

Per VM, the rules of engine/retention.py decide; two generations stay whatever they say:
the VM's newest (an operator's last restore point), and the generation the export
history names as the base of the next incremental. Each generation is removed under
the VM's writer lock, so an export running on that VM makes prune skip the VM instead
of taking its base away. Removal is one manifest unlink at a time, and gc runs only
after: an interrupted prune leaves every generation it keeps whole, and what it freed
half-way is garbage for the next gc.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from hypersdk.engine.catalog import resolve_vm
from hypersdk.engine.retention import Retention, apply
from hypersdk.errors import LockedError
from hypersdk.repository.gc import GcReport, collect_garbage
from hypersdk.repository.manifest import Manifest
from hypersdk.repository.repository import Repository
from hypersdk.state.history import History

LATEST = "latest generation"
NEXT_BASE = "base of the next incremental"


@dataclass(frozen=True)
class PruneItem:
    vm: str
    id: str
    created: str
    type: str
    reasons: tuple[str, ...]  # empty: removed (or, in a dry run, would be)

    @property
    def keep(self) -> bool:
        return bool(self.reasons)

    def to_json(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "generation": self.id,
            "created": self.created,
            "type": self.type,
            "action": "keep" if self.keep else "remove",
            "reasons": list(self.reasons),
        }


@dataclass
class PruneReport:
    retention: Retention
    dry_run: bool
    items: list[PruneItem] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # VM -> why it was left alone
    done: set[tuple[str, str]] = field(default_factory=set)  # (vm, generation) removed
    gc: GcReport | None = None

    @property
    def removed(self) -> list[PruneItem]:
        """Removed, or in a dry run the ones that would be."""
        if self.dry_run:
            return [i for i in self.items if not i.keep]
        return [i for i in self.items if (i.vm, i.id) in self.done]

    @property
    def kept(self) -> list[PruneItem]:
        return [i for i in self.items if i.keep]

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "policy": self.retention.to_json(),
            "generations": [
                {**i.to_json(), "removed": (i.vm, i.id) in self.done} for i in self.items
            ],
            "kept": len(self.kept),
            "removed": len(self.removed),
            "skipped": [{"vm": vm, "reason": why} for vm, why in self.skipped.items()],
            "gc": None if self.gc is None else asdict(self.gc),  # as hyperctl gc --json
        }


def _created(m: Manifest) -> datetime:
    return datetime.fromisoformat(m.created.replace("Z", "+00:00"))


def plan(
    repo: Repository,
    retention: Retention,
    vm: str | None = None,
    history: History | None = None,
) -> list[PruneItem]:
    """What a prune would do, newest first per VM (``vm`` is any name of one VM)."""
    vm_ids = [resolve_vm(repo, vm)] if vm is not None else repo.vm_ids()
    items: list[PruneItem] = []
    for vm_id in vm_ids:
        gens = repo.generations(vm_id)
        if not gens:
            continue
        by_id = {m.id: m for m in gens}
        newest = max(gens, key=lambda m: (m.created, m.id))
        protected = {newest.id: LATEST}
        last = history.latest(vm_id, repo.config.id) if history is not None else None
        if last is not None and last.generation in by_id:
            protected.setdefault(last.generation, NEXT_BASE)
        for v in apply(retention, [(m.id, _created(m)) for m in gens], protected):
            m = by_id[v.id]
            items.append(PruneItem(vm_id, m.id, m.created, m.type, v.reasons))
    return items


def prune(
    repo: Repository,
    retention: Retention,
    vm: str | None = None,
    *,
    dry_run: bool = False,
    history: History | None = None,
    run_gc: bool = True,
    on_removed: Callable[[PruneItem], None] | None = None,
) -> PruneReport:
    """Apply ``retention``; then, unless ``dry_run`` or nothing was removed, gc."""
    report = PruneReport(retention, dry_run, plan(repo, retention, vm, history))
    if dry_run:
        return report
    for item in report.items:
        if item.keep or item.vm in report.skipped:
            continue
        try:
            repo.delete_generation(item.vm, item.id)
        except LockedError as err:
            report.skipped[item.vm] = f"an export of this VM holds its lock ({err})"
            continue
        report.done.add((item.vm, item.id))
        if on_removed is not None:
            on_removed(item)
    if run_gc and report.removed:
        report.gc = collect_garbage(repo)
    return report
