"""Request and response models of every route (docs/api.md is the contract).

Requests ignore unknown fields. Responses are described completely so that
``/openapi.json`` is a faithful schema; free-form parts (an export's ``result``) are
objects with any keys.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hypersdk.daemon.jobs import JobKind, JobState
from hypersdk.engine import request as req
from hypersdk.engine.request import ExportRequest
from hypersdk.repository.repository import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE

NO_NUL = r"^[^\x00]+$"
ABSOLUTE = r"^/[^\x00]*$"


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
        pattern=ABSOLUTE,
        description="repository folder (absolute path); default: the daemon's",
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
        min_length=1, max_length=4096, pattern=ABSOLUTE, description="absolute path to write"
    )
    format: Literal["raw", "qcow2", "vmdk"] = "raw"
    force: bool = False


class VerifyCreate(_Request):
    output: str | None = _output()
    vm: str | None = _vm_name(None)
    generation: str | None = _name(None, "generation id or 'latest' (needs vm)")


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


# -- service -------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]
    version: str
