"""One export of a VM from start to finish: lock, decide, freeze, copy, commit, record.

Order matters for the chain: the writer lock is taken before the hypervisor is touched;
the generation is committed before the export history records the new change ids, and
only then may the provider drop older tracking state (QEMU checkpoints).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from hypersdk.engine.audit import AuditReport, not_performed
from hypersdk.engine.decision import Decision, decide
from hypersdk.engine.request import ExportHooks, ExportRequest
from hypersdk.engine.writer import GenerationResult, GenerationWriter, plan_disks
from hypersdk.errors import ChangeIdInvalid, UsageError
from hypersdk.providers.base import CbtStatus, FrozenDisk, Provider, VmIdentity
from hypersdk.repository.keys import Password
from hypersdk.repository.manifest import Manifest
from hypersdk.repository.repository import DEFAULT_BLOCK_SIZE, DEFAULT_ZSTD_LEVEL, Repository
from hypersdk.state.history import DiskEntry, ExportRecord, History

__all__ = ["ExportHooks", "ExportReport", "ExportRequest", "run_export"]


@dataclass
class ExportReport:
    vm: str
    vm_name: str
    generation: str
    mode: str
    reason: str
    bytes_read: int
    bytes_stored: int
    duration_s: float
    output: str
    disks: list[dict[str, Any]] = field(default_factory=list)
    audit: AuditReport | None = None  # when --audit asked for one

    def to_json(self) -> dict[str, Any]:
        extra = {"audit": self.audit.to_json()} if self.audit is not None else {}
        return {
            "vm": self.vm,
            "vm_name": self.vm_name,
            "generation": self.generation,
            "mode": self.mode,
            "reason": self.reason,
            "bytes_read": self.bytes_read,
            "bytes_stored": self.bytes_stored,
            "duration_s": round(self.duration_s, 3),
            "throughput_mib_s": round(self.bytes_read / self.duration_s / 2**20, 1)
            if self.duration_s
            else 0.0,
            "output": self.output,
            "disks": self.disks,
            **extra,
        }


def choose_mode(request: ExportRequest, decision: Decision) -> tuple[bool, str]:
    """(incremental?, reason) for what the user asked and what is possible."""
    if request.audit:
        return False, "Full export with a CBT audit (--audit)"
    if request.force_full:
        return False, "Full export forced (--force-full)"
    if not request.incremental:
        return False, "Full export requested (no --incremental)"
    return decision.can_incremental, decision.reason


def run_export(
    provider: Provider,
    request: ExportRequest,
    history: History,
    hooks: ExportHooks | None = None,
    *,
    password: Password | None = None,
) -> ExportReport:
    """Export the provider's VM as ``request`` says (already checked when it was built);
    ``hooks`` watch and may cancel it. ``password``: an encrypted repository's (a new
    repository is encrypted when one is given; without it, ``HYPERSDK_PASSWORD``)."""
    hooks = hooks or ExportHooks()
    started = time.monotonic()
    history.prepare()
    vm = provider.identity()
    level = request.compression_level
    repo = Repository.open_or_init(
        request.output,
        block_size=request.block_size or DEFAULT_BLOCK_SIZE,
        compression=request.compression or "zstd",
        compression_level=DEFAULT_ZSTD_LEVEL if level is None else level,
        password=password,
    )
    if request.block_size is not None and request.block_size != repo.config.block_size:
        raise UsageError(
            f"{repo.location} uses {repo.config.block_size}-byte blocks; a block size can only "
            "be chosen for a new repository"
        )
    if request.compression is not None:
        # An explicit choice also applies to an existing repository's new chunks: each
        # chunk records how it is stored, so readers need nothing else.
        repo.use_compression(request.compression, level)
    with GenerationWriter(repo, vm) as writer:
        status = provider.cbt_status()
        decision = decide(
            status,
            history.latest(vm.vm_id, repo.config.id),
            check_change_id=provider.check_change_id,
            repo=repo,
            max_age=request.max_age,
        )
        incremental, reason = choose_mode(request, decision)
        audit: Decision | AuditReport | None = None
        if request.audit:
            # An audit needs what an incremental needs: a trusted base and its change ids.
            trusted = decision.can_incremental and decision.parent is not None
            audit = decision if trusted else not_performed(decision.reason)
        try:
            result, disks = _copy(
                provider, writer, decision if incremental else None, reason, request, hooks, audit
            )
        except ChangeIdInvalid as exc:
            # The platform refused the old change id (vSphere FileFault/InvalidArgument,
            # a QEMU checkpoint that vanished): the chain cannot continue; start anew.
            reason = f"Previous change id was rejected ({exc}): full export instead"
            if audit is not None:
                audit = not_performed(f"the platform rejected the previous change id ({exc})")
            result, disks = _copy(provider, writer, None, reason, request, hooks, audit)
    _record(history, repo, vm, status, result, disks)
    provider.backup_committed({d.key: d.change_id for d in disks})
    m = result.manifest
    return ExportReport(
        vm=vm.vm_id,
        vm_name=vm.name,
        generation=m.id,
        mode=m.type,
        reason=m.reason,
        bytes_read=result.bytes_read,
        bytes_stored=result.bytes_stored,
        duration_s=time.monotonic() - started,  # the whole export, snapshot included
        output=repo.location,
        disks=[
            {
                "key": d.key,
                "capacity_bytes": d.capacity_bytes,
                "change_id": d.change_id,
                "bytes_read": d.bytes_read,
                "bytes_stored": d.bytes_stored,
            }
            for d in m.disks
        ],
        audit=result.audit,
    )


def _copy(
    provider: Provider,
    writer: GenerationWriter,
    decision: Decision | None,
    reason: str,
    request: ExportRequest,
    hooks: ExportHooks,
    audit: Decision | AuditReport | None = None,
) -> tuple[GenerationResult, list[FrozenDisk]]:
    since = decision.since if decision is not None else None
    parent = decision.parent if decision is not None else None
    against: Manifest | AuditReport | None = audit if isinstance(audit, AuditReport) else None
    if isinstance(audit, Decision):
        # A full read, plus the platform's answer since the audited generation.
        since, against = audit.since, audit.parent
    with provider.open_backup(since, audit=isinstance(audit, Decision)) as session:
        disks = list(session.disks)
        # One plan per disk, shared by the progress total and the copy.
        plans = plan_disks(disks, writer.repo.config.block_size)
        if hooks.on_plan is not None:
            total = sum(p.read_bytes() for p in plans)
            hooks.on_plan("incremental" if parent else "full", reason, total)
        result = writer.write(
            disks,
            parent=parent,
            reason=reason,
            parallel=request.parallel,
            hooks=hooks,
            plans=plans,
            audit=against,
        )
    return result, disks


def _record(
    history: History,
    repo: Repository,
    vm: VmIdentity,
    status: CbtStatus,
    result: GenerationResult,
    disks: list[FrozenDisk],
) -> None:
    m = result.manifest
    history.record(
        ExportRecord(
            vm_id=m.vm_id,
            vm_name=m.vm_name,
            export_time=m.created[:19] + "Z",
            snapshot_id=m.id,
            change_id=m.id,
            disk_change_ids={d.key: d.change_id for d in disks},
            export_path=repo.location,
            total_size=m.total_size,
            disks=[
                DiskEntry(d.key, d.path, d.capacity_bytes, d.change_id, d.backing_info)
                for d in disks
            ],
            platform=m.platform,
            locator=vm.locator,
            generation=m.id,
            repository_id=repo.config.id,
            mode=m.type,
            reason=m.reason,
            cbt_enabled=status.enabled,
            bytes_read=result.bytes_read,
            bytes_stored=result.bytes_stored,
            duration_s=round(result.duration_s, 3),
            created=m.created,
        )
    )
