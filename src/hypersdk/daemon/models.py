"""Request and response models of every route (docs/api.md is the contract).

Requests ignore unknown fields. Responses are described completely so that
``/openapi.json`` is a faithful schema; free-form parts (an export's ``result``) are
objects with any keys.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hypersdk.daemon.jobs import JobKind, JobState
from hypersdk.daemon.policy_store import PolicyRunState
from hypersdk.engine import request as req
from hypersdk.engine.request import ExportRequest
from hypersdk.repository.repository import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE

NO_NUL = r"^[^\x00]+$"
ABSOLUTE = r"^/[^\x00]*$"
TARGET = r"^(/|qemu:)[^\x00]*$"  # a restore target: a path, or a qemu: disk
REPOSITORY = r"^(/|s3://)[^\x00]*$"  # a folder (absolute path) or an s3:// URL


def _vm_path() -> Any:
    return Field(
        min_length=1,
        max_length=4096,
        pattern=NO_NUL,
        description="a vSphere inventory path, qemu:/path/qmp.sock[?nbd=...], qcow2:/path or "
        "libvirt:DOMAIN[?connect=URI] (else the daemon's LIBVIRT_DEFAULT_URI, else "
        "qemu:///system)",
    )


def _output() -> Any:
    return Field(
        default=None,
        min_length=1,
        max_length=4096,
        pattern=REPOSITORY,
        description="repository: a folder (absolute path) or s3://bucket/prefix; "
        "default: the daemon's",
    )


def _name(default: Any = ..., description: str | None = None) -> Any:
    return Field(
        default=default, min_length=1, max_length=1024, pattern=NO_NUL, description=description
    )


def _vm_name(default: Any) -> Any:
    # As long as a locator: a VM is named by its locator, its id or its name.
    return Field(
        default=default,
        min_length=1,
        max_length=4096,
        pattern=NO_NUL,
        description="the VM: the locator it was exported from, its id or its name",
    )


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- errors --------------------------------------------------------------------------


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


# -- CBT -----------------------------------------------------------------------------


class VmRequest(_Request):
    vm_path: str = _vm_path()


class VmOutputRequest(_Request):
    vm_path: str = _vm_path()
    output: str | None = _output()


class CbtChangeResponse(BaseModel):
    success: bool
    message: str


class Disk(BaseModel):
    model_config = ConfigDict(extra="allow")

    key: str
    path: str
    capacity_bytes: int
    change_id: str
    backing_info: str
    cbt_supported: bool | None = None
    cbt_reason: str | None = None


class LastExportDisk(BaseModel):
    key: str
    capacity_bytes: int
    change_id: str


class LastExport(BaseModel):
    model_config = ConfigDict(extra="allow")

    vm_id: str
    export_time: str
    total_size: int
    disk_info: list[LastExportDisk] | None = None
    generation: str | None = None
    export_path: str | None = None


class CbtStatusResponse(BaseModel):
    vm_path: str
    cbt_enabled: bool
    disks: list[Disk]
    last_export: LastExport | None
    can_incremental: bool
    reason: str


class AnalyzeResponse(BaseModel):
    vm_path: str
    can_incremental: bool
    reason: str
    last_export: LastExport | None
    current_disks: list[Disk]
    estimated_changed_bytes: int | None
    estimated_savings_bytes: int
    estimated_duration: str


# -- jobs ----------------------------------------------------------------------------


class ExportCreate(_Request):
    """The JSON form of an ``ExportRequest``: the bounds here only describe the schema;
    ``to_request`` builds the request, which checks every field (and is the default)."""

    vm_path: str = _vm_path()
    output: str | None = _output()
    incremental: bool = False
    force_full: bool = False
    audit: bool = Field(
        default=False,
        description="read every block and report the blocks CBT missed since the "
        "previous generation (implies a full read)",
    )
    compression: Literal["zstd", "lz4", "none"] | None = None
    compression_level: int | None = Field(default=None, ge=req.MIN_LEVEL, le=req.MAX_LEVEL)
    block_size: int | None = Field(
        default=None, ge=MIN_BLOCK_SIZE, le=MAX_BLOCK_SIZE, description="a power of two"
    )
    parallel: int = Field(default=req.DEFAULT_PARALLEL, ge=req.MIN_PARALLEL, le=req.MAX_PARALLEL)
    max_incremental_age_days: float = Field(
        default=req.DEFAULT_MAX_AGE_DAYS, gt=0, le=req.MAX_AGE_DAYS
    )

    def to_request(self, output: str) -> ExportRequest:
        """The checked request, writing into ``output`` (the resolved, allowed folder)."""
        return ExportRequest(
            output=output,
            incremental=self.incremental,
            force_full=self.force_full,
            audit=self.audit,
            compression=self.compression,
            compression_level=self.compression_level,
            block_size=self.block_size,
            parallel=self.parallel,
            max_incremental_age_days=self.max_incremental_age_days,
        )


class RestoreCreate(_Request):
    output: str | None = _output()
    vm: str = _vm_name(...)
    generation: str = _name("latest", "generation id or 'latest'")
    disk: str | None = _name(None, "disk key (may be left out when the VM has one disk)")
    to: str = Field(
        min_length=1,
        max_length=4096,
        pattern=TARGET,
        description="absolute path to write; with since/compare an existing raw file, "
        "block device or qcow2 file, or a qemu: locator",
    )
    format: Literal["raw", "qcow2", "vmdk"] | None = Field(
        default=None,
        description="format of a new file (default raw); detected when restoring into an "
        "existing disk",
    )
    force: bool = False
    since: str | None = _name(
        None, "the target holds this generation: write only the blocks that differ from it"
    )
    compare: bool = Field(
        default=False, description="read the target and write the blocks that differ"
    )


class VerifyCreate(_Request):
    output: str | None = _output()
    vm: str | None = _vm_name(None)
    generation: str | None = _name(None, "generation id or 'latest' (needs vm)")


class GcCreate(_Request):
    output: str | None = _output()
    dry_run: bool = Field(default=False, description="only count what gc would remove")


class Job(BaseModel):
    id: str
    kind: JobKind
    vm_path: str | None
    output: str | None
    state: JobState
    phase: str
    bytes_done: int
    bytes_total: int | None
    throughput_bytes_per_s: float | None
    mode: str | None
    reason: str | None
    created: str
    started: str | None
    finished: str | None
    result: dict[str, Any] | None
    error: ErrorBody | None


class JobList(BaseModel):
    jobs: list[Job]


# -- repositories --------------------------------------------------------------------


class GenerationDisk(BaseModel):
    key: str
    capacity_bytes: int
    change_id: str


class GenerationAudit(BaseModel):
    performed: bool
    previous: str | None
    clean: bool
    blocks_checked: int
    blocks_missed: int


class Generation(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    vm: str
    vm_name: str
    platform: str
    locator: str | None = Field(
        default=None, description="the locator the VM was exported from (canonical)"
    )
    type: str
    reason: str
    parent: str | None
    created: str
    completed: str | None
    block_size: int
    total_size: int
    bytes_read: int
    bytes_stored: int
    disks: list[GenerationDisk]
    audit: GenerationAudit | None = Field(
        default=None, description="the CBT audit this generation made (hyperexport --audit)"
    )
    suspect: bool = Field(
        default=False,
        description="a later CBT audit found blocks that tracking missed since this generation",
    )


class GenerationList(BaseModel):
    generations: list[Generation]


# -- serve sessions ------------------------------------------------------------------


class ServeSessionCreate(_Request):
    output: str | None = _output()
    vm: str = _vm_name(...)
    generation: str = _name("latest", "generation id or 'latest'")
    disk: str | None = _name(None, "disk key (may be left out when the VM has one disk)")
    writable: bool = Field(
        default=False,
        description="accept writes into a temporary overlay dropped when the session stops",
    )


class ServeSession(BaseModel):
    id: str
    output: str
    vm: str = Field(description="the VM id the name resolved to")
    generation: str
    disk: str
    size: int
    writable: bool
    uri: str = Field(description="nbd+unix:///?socket=... (a socket on the daemon's host)")
    socket: str
    created: str
    connections: int
    bytes_read: int


class ServeSessionList(BaseModel):
    sessions: list[ServeSession]


# -- service -------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]
    version: str


# -- backup policies -----------------------------------------------------------------


class RetentionRules(BaseModel):
    """engine/retention.py's rules (restic's ``forget --keep-*``); 0 or absent: off."""

    model_config = ConfigDict(extra="forbid")

    keep_last: int = Field(default=0, ge=0)
    keep_hourly: int = Field(default=0, ge=0)
    keep_daily: int = Field(default=0, ge=0)
    keep_weekly: int = Field(default=0, ge=0)
    keep_monthly: int = Field(default=0, ge=0)
    keep_yearly: int = Field(default=0, ge=0)
    keep_within: str = Field(default="", max_length=64, description="e.g. 7d or 1y6m")


class PolicyVm(BaseModel):
    """A VM of a policy and its placement (the keys of max_per_host / max_per_datastore)."""

    model_config = ConfigDict(extra="forbid")

    vm: str = _vm_path()
    host: str | None = _name(None, "ESXi host (default: this host for QEMU VMs)")
    datastore: str | None = _name(None, "datastore (default: a qcow2 image's filesystem)")


class PolicyCreate(BaseModel):
    """PUT /policies/{name}: the policy file's fields (unknown fields are refused: a
    misspelt rule must not vanish)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = _name(None, "must be the path's name when given")
    vms: list[str | PolicyVm] = Field(min_length=1, max_length=1000)
    schedule: str = Field(
        min_length=1,
        max_length=256,
        description="cron, UTC: 5 fields, or 6 with seconds first",
    )
    output: str | None = _output()
    retention: RetentionRules | None = None
    full_every_days: float | None = Field(default=None, gt=0)
    audit_every_days: float | None = Field(default=None, gt=0)
    max_concurrent: int = Field(default=1, ge=1, le=64)
    max_per_host: int | None = Field(default=None, ge=1, le=64)
    max_per_datastore: int | None = Field(default=None, ge=1, le=64)


class PolicyInfo(BaseModel):
    name: str
    vms: list[PolicyVm]
    schedule: str
    output: str
    retention: RetentionRules
    full_every_days: float | None
    audit_every_days: float | None
    max_concurrent: int
    max_per_host: int | None
    max_per_datastore: int | None
    source: Literal["file", "api"]
    next_run: str = Field(description="the next scheduled time (UTC)")
    running: str | None = Field(description="the id of the run going, if any")


class PolicyList(BaseModel):
    policies: list[PolicyInfo]


class PolicyRunExport(BaseModel):
    vm: str
    mode: Literal["incremental", "full", "audit"] = Field(description="what the policy asked")
    why: str
    job_id: str | None
    state: str = Field(description="pending, then the export job's state")
    generation: str | None
    result_mode: str | None = Field(description="what the export did: full or incremental")
    blocks_missed: int | None = Field(description="the CBT audit's count, when one was made")
    error: str | None


class PolicyRun(BaseModel):
    id: str
    policy: str
    trigger: Literal["schedule", "catch-up", "manual"]
    scheduled: str | None = Field(description="the cron time of the run (null: run by hand)")
    state: PolicyRunState
    reason: str | None
    started: str | None
    finished: str | None
    exports: list[PolicyRunExport]
    prune: dict[str, Any] | None = Field(description="the prune report, as hyperctl prune --json")


class PolicyRunList(BaseModel):
    runs: list[PolicyRun]
