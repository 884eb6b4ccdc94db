"""Jobs: start an export, read, list and cancel any job, follow one as SSE events."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from hypersdk.daemon import jobs
from hypersdk.daemon.jobs import JobKind, JobState
from hypersdk.daemon.models import ExportCreate, Job, JobList
from hypersdk.daemon.responses import ERRORS
from hypersdk.daemon.runner import ExportSpec
from hypersdk.daemon.state import Daemon, daemon

router = APIRouter(tags=["jobs"], responses=ERRORS)
Dep = Annotated[Daemon, Depends(daemon)]

EVENT_INTERVAL = 0.25  # seconds: at most ~4 events a second
DISCONNECT_CHECK = 0.25  # seconds: how soon a quiet stream notices its client left


@router.post("/exports", response_model=Job, status_code=202)
def create_export(body: ExportCreate, d: Dep) -> jobs.Job:
    d.check_vm(body.vm_path)
    spec = ExportSpec(vm_path=body.vm_path, request=body.to_request(d.output(body.output)))
    return d.runner.submit_export(spec)


@router.get("/exports", response_model=JobList)
def list_jobs(
    d: Dep,
    state: JobState | None = None,
    kind: JobKind | None = None,
    vm_path: Annotated[str | None, Query(max_length=4096)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    found = d.store.find(state=state, kind=kind, vm_path=vm_path, limit=limit)
    return {"jobs": [job.to_json() for job in found]}


@router.get("/exports/{job_id}", response_model=Job)
def get_job(job_id: str, d: Dep) -> jobs.Job:
    return d.store.get(job_id)


@router.delete("/exports/{job_id}", response_model=Job)
def cancel_job(job_id: str, d: Dep) -> jobs.Job:
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
    d.store.get(job_id)  # 404 before the stream starts

    async def stream() -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def notify() -> None:  # called by the thread that changed the job
            with contextlib.suppress(RuntimeError):  # the loop is closing: nobody listens
                loop.call_soon_threadsafe(changed.set)

        unwatch = d.store.watch(job_id, notify)
        try:
            job, last = d.store.get(job_id), None  # read after watching: no change is lost
            while True:
                if job != last:
                    last = job
                    if job.done:
                        yield _event("end", job)
                        return
                    yield _event("job", job)
                # At most ~4 events a second: changes meanwhile merge into the next one.
                await asyncio.sleep(EVENT_INTERVAL)
                while not changed.is_set():
                    if await request.is_disconnected():
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), DISCONNECT_CHECK)
                changed.clear()
                job = d.store.get(job_id)
        finally:
            unwatch()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _event(name: str, job: jobs.Job) -> str:
    return f"event: {name}\ndata: {json.dumps(job.to_json(), separators=(',', ':'))}\n\n"
