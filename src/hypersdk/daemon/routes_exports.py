"""Jobs: start an export, read, list and cancel any job, follow one as SSE events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from hypersdk.daemon.jobs import FINISHED
from hypersdk.daemon.models import ExportCreate, Job, JobKind, JobList, JobState
from hypersdk.daemon.responses import ERRORS
from hypersdk.daemon.runner import ExportSpec
from hypersdk.daemon.state import Daemon, daemon
from hypersdk.errors import NotFoundError
from hypersdk.repository.repository import check_block_size

router = APIRouter(tags=["jobs"], responses=ERRORS)
Dep = Annotated[Daemon, Depends(daemon)]

EVENT_INTERVAL = 0.25  # seconds: at most ~4 events a second


@router.post("/exports", response_model=Job, status_code=202)
def create_export(body: ExportCreate, d: Dep) -> dict[str, Any]:
    if body.block_size is not None:
        check_block_size(body.block_size)
    d.check_vm(body.vm_path)
    spec = ExportSpec(
        vm_path=body.vm_path,
        output=d.output(body.output),
        incremental=body.incremental,
        force_full=body.force_full,
        compression=body.compression,
        compression_level=body.compression_level,
        block_size=body.block_size,
        parallel=body.parallel,
        max_incremental_age_days=body.max_incremental_age_days,
    )
    return d.runner.submit_export(spec)


@router.get("/exports", response_model=JobList)
def list_jobs(
    d: Dep,
    state: JobState | None = None,
    kind: JobKind | None = None,
    vm_path: Annotated[str | None, Query(max_length=4096)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    return {"jobs": d.store.find(state=state, kind=kind, vm_path=vm_path, limit=limit)}


@router.get("/exports/{job_id}", response_model=Job)
def get_job(job_id: str, d: Dep) -> dict[str, Any]:
    return d.store.get(job_id)


@router.delete("/exports/{job_id}", response_model=Job)
def cancel_job(job_id: str, d: Dep) -> dict[str, Any]:
    return d.runner.cancel(job_id)


@router.get(
    "/exports/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`event: job` / `data: <job JSON>` on every change, "
            "then one `event: end` with the finished job",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def job_events(job_id: str, request: Request, d: Dep) -> StreamingResponse:
    first = d.store.get(job_id)  # 404 before the stream starts

    async def stream() -> AsyncIterator[str]:
        last: dict[str, Any] | None = None
        job = first
        while True:
            if job != last:
                last = job
                if job["state"] in FINISHED:
                    yield _event("end", job)
                    return
                yield _event("job", job)
            if await request.is_disconnected():
                return
            await asyncio.sleep(EVENT_INTERVAL)
            try:
                job = d.store.get(job_id)
            except NotFoundError:  # pragma: no cover - jobs are never deleted
                return

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _event(name: str, job: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(job, separators=(',', ':'))}\n\n"
