"""The spec's four CBT routes: enable, disable, status and incremental analysis."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from hypersdk.daemon.models import (
    AnalyzeResponse,
    CbtChangeResponse,
    CbtStatusResponse,
    VmOutputRequest,
    VmRequest,
)
from hypersdk.daemon.responses import ERRORS
from hypersdk.daemon.state import Daemon, daemon
from hypersdk.engine.analysis import Analysis, analyze, disk_json, last_export_json
from hypersdk.errors import NotFoundError
from hypersdk.repository.repository import Repository
from hypersdk.state.history import History

router = APIRouter(tags=["cbt"], responses=ERRORS)
Dep = Annotated[Daemon, Depends(daemon)]


@router.post("/cbt/enable", response_model=CbtChangeResponse)
def enable_cbt(body: VmRequest, d: Dep) -> dict[str, Any]:
    with d.provider(body.vm_path) as provider:
        provider.enable_cbt()
    return {"success": True, "message": f"CBT enabled successfully for {body.vm_path}"}


@router.post("/cbt/disable", response_model=CbtChangeResponse)
def disable_cbt(body: VmRequest, d: Dep) -> dict[str, Any]:
    with d.provider(body.vm_path) as provider:
        provider.disable_cbt()
    return {"success": True, "message": f"CBT disabled successfully for {body.vm_path}"}


def _analyze(d: Daemon, body: VmOutputRequest) -> Analysis:
    d.check_vm(body.vm_path)
    repo: Repository | None = None
    if body.output is not None:
        repo = Repository.open(d.output(body.output), password=d.config.repository_password)
    elif d.config.output is not None:
        try:
            repo = Repository.open(d.config.output, password=d.config.repository_password)
        except NotFoundError:
            repo = None  # no export into the default repository yet: history alone
    with d.provider(body.vm_path) as provider:
        return analyze(provider, History(d.config.state_dir), repo=repo)


@router.post("/cbt/status", response_model=CbtStatusResponse)
def cbt_status(body: VmOutputRequest, d: Dep) -> dict[str, Any]:
    a = _analyze(d, body)
    return {
        "vm_path": body.vm_path,
        "cbt_enabled": a.cbt.enabled,
        "disks": [disk_json(x) for x in a.cbt.disks],
        "last_export": last_export_json(a.last),
        "can_incremental": a.decision.can_incremental,
        "reason": a.decision.reason,
    }


@router.post("/incremental/analyze", response_model=AnalyzeResponse)
def analyze_incremental(body: VmOutputRequest, d: Dep) -> dict[str, Any]:
    a = _analyze(d, body)
    return {
        "vm_path": body.vm_path,
        "can_incremental": a.decision.can_incremental,
        "reason": a.decision.reason,
        "last_export": last_export_json(a.last, full=False),
        "current_disks": [disk_json(x) for x in a.cbt.disks],
        "estimated_changed_bytes": a.changed_bytes,
        "estimated_savings_bytes": a.savings_bytes,
        "estimated_duration": a.estimated_duration,
    }
