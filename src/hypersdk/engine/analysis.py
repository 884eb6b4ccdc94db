"""What an incremental export would do now: the data behind ``--incremental-info``,
``/cbt/status`` and ``/incremental/analyze``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from hypersdk.engine.decision import DEFAULT_MAX_AGE, Decision, decide
from hypersdk.errors import HyperSDKError
from hypersdk.providers.base import CbtStatus, DiskInfo, Provider, VmIdentity
from hypersdk.repository.repository import Repository
from hypersdk.state.history import ExportRecord, History


@dataclass
class Analysis:
    vm: VmIdentity
    cbt: CbtStatus
    last: ExportRecord | None
    decision: Decision
    changed_bytes: int | None  # estimate of what an incremental would read now
    exact: bool  # the platform counted the changed bytes (QEMU bitmaps)
    throughput: float | None  # bytes/s measured over earlier exports

    @property
    def total_size(self) -> int:
        return sum(d.capacity_bytes for d in self.cbt.disks)

    @property
    def savings_bytes(self) -> int:
        if not self.decision.can_incremental or self.changed_bytes is None:
            return 0
        return max(0, self.total_size - self.changed_bytes)

    @property
    def estimated_duration(self) -> str:
        to_read = self.changed_bytes if self.decision.can_incremental else self.total_size
        if to_read is None or not self.throughput:
            return "unknown (no earlier export measured)"
        return human_duration(to_read / self.throughput)


def human_duration(seconds: float) -> str:
    if seconds < 60:
        return "less than a minute"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds / 3600:.1f} hours"


def disk_json(d: DiskInfo) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "key": d.key,
        "path": d.path,
        "capacity_bytes": d.capacity_bytes,
        "change_id": d.change_id,
        "backing_info": d.backing_info,
    }
    if not d.cbt_supported:
        doc["cbt_supported"] = False
        doc["cbt_reason"] = d.cbt_reason
    return doc


def last_export_json(r: ExportRecord | None, *, full: bool = True) -> dict[str, Any] | None:
    if r is None:
        return None
    doc: dict[str, Any] = {
        "vm_id": r.vm_id,
        "export_time": r.export_time,
        "total_size": r.total_size,
    }
    if full:
        doc["disk_info"] = [
            {"key": d.key, "capacity_bytes": d.capacity_bytes, "change_id": d.change_id}
            for d in r.disks
        ]
        doc["generation"] = r.generation
        doc["export_path"] = r.export_path
    return doc


def analyze(
    provider: Provider,
    history: History,
    *,
    repo: Repository | None = None,
    max_age: timedelta = DEFAULT_MAX_AGE,
) -> Analysis:
    vm = provider.identity()
    cbt = provider.cbt_status()
    last = history.latest(vm.vm_id, repo.config.id if repo is not None else None)
    decision = decide(
        cbt, last, check_change_id=provider.check_change_id, repo=repo, max_age=max_age
    )
    changed: int | None = None
    exact = False
    if decision.can_incremental and decision.since is not None:
        try:
            est = provider.estimate_changes(decision.since)
            changed, exact = sum(est.per_disk.values()), est.exact
        except HyperSDKError:
            changed = None
    records = [r for r in history.records(vm.vm_id) if r.duration_s > 0 and r.bytes_read > 0]
    throughput = (
        sum(r.bytes_read for r in records) / sum(r.duration_s for r in records) if records else None
    )
    return Analysis(vm, cbt, last, decision, changed, exact, throughput)
