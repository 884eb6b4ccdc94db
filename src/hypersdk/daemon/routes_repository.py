"""Repositories: list generations, restore a disk (job), verify (job)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from hypersdk.daemon import jobs
from hypersdk.daemon.models import (
    GenerationList,
    Job,
    RestoreCreate,
    VerifyCreate,
)
from hypersdk.daemon.responses import ERRORS
from hypersdk.daemon.runner import prepare_restore, prepare_verify
from hypersdk.daemon.state import Daemon, daemon
from hypersdk.engine import catalog
from hypersdk.repository.repository import Repository

router = APIRouter(tags=["repository"], responses=ERRORS)
Dep = Annotated[Daemon, Depends(daemon)]


@router.get("/generations", response_model=GenerationList)
def list_generations(
    d: Dep,
    output: Annotated[
        str | None, Query(min_length=1, max_length=4096, pattern=r"^(/|s3://)[^\x00]*$")
    ] = None,
    vm: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=4096,
            pattern=r"^[^\x00]+$",
            description="only this VM: its locator, id or name (404 when not held)",
        ),
    ] = None,
) -> dict[str, Any]:
    gens = catalog.list_generations(Repository.open(d.output(output)), vm)
    return {"generations": [m.summary() for m in gens]}


@router.post("/restores", response_model=Job, status_code=202)
def create_restore(body: RestoreCreate, d: Dep) -> jobs.Job:
    output = d.output(body.output)
    target = d.allowed.restore_target(body.to)
    spec = prepare_restore(
        output,
        body.vm,
        body.generation,
        body.disk,
        target,
        body.format,
        body.force,
    )
    return d.runner.submit_restore(spec)


@router.post("/verifications", response_model=Job, status_code=202)
def create_verification(body: VerifyCreate, d: Dep) -> jobs.Job:
    spec = prepare_verify(d.output(body.output), body.vm, body.generation)
    return d.runner.submit_verify(spec)
