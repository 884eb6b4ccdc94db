"""Repositories: list generations, restore a disk (job), verify (job)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from hypersdk.daemon import jobs
from hypersdk.daemon.models import (
    GcCreate,
    GenerationList,
    Job,
    RestoreCreate,
    VerifyCreate,
)
from hypersdk.daemon.responses import ERRORS
from hypersdk.daemon.runner import GcSpec, prepare_restore, prepare_verify
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
    repo = Repository.open(d.output(output), password=d.config.repository_password)
    gens = catalog.list_generations(repo, vm)
    return {"generations": catalog.summaries(gens)}


@router.post("/restores", response_model=Job, status_code=202)
def create_restore(body: RestoreCreate, d: Dep) -> jobs.Job:
    output = d.output(body.output)
    into = body.since is not None or body.compare
    if into and body.to.startswith("qemu:"):
        d.check_vm(body.to)  # the same rules as an export's qemu: locator
        target = body.to
    else:
        target = d.allowed.restore_target(body.to)
        if into:
            # a qcow2 target is opened by qemu-nbd with its backing chain: all allowed
            d.allowed.qcow2_chain(target)
    spec = prepare_restore(
        output,
        body.vm,
        body.generation,
        body.disk,
        target,
        body.format,
        body.force,
        since=body.since,
        compare=body.compare,
        password=d.config.repository_password,
    )
    return d.runner.submit_restore(spec)


@router.post("/gc", response_model=Job, status_code=202)
def create_gc(body: GcCreate, d: Dep) -> jobs.Job:
    """``hyperctl gc`` as a job; the repository is opened (and unlocked) first, so a
    wrong folder or password answers at once."""
    output = d.output(body.output)
    Repository.open(output, password=d.config.repository_password)
    return d.runner.submit_gc(GcSpec(output, body.dry_run))


@router.post("/verifications", response_model=Job, status_code=202)
def create_verification(body: VerifyCreate, d: Dep) -> jobs.Job:
    spec = prepare_verify(
        d.output(body.output), body.vm, body.generation, d.config.repository_password
    )
    return d.runner.submit_verify(spec)
