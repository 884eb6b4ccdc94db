"""``GET /repository``: a repository's size, chunk count and dedup ratio, with its last
verification (read-only; the dashboard's Repository page shows it).

One listing of the chunk store and one read of each manifest: no chunk is read."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from hypersdk.daemon.jobs import JobKind
from hypersdk.daemon.models import Job
from hypersdk.daemon.responses import ERRORS
from hypersdk.daemon.state import Daemon, daemon
from hypersdk.engine import catalog
from hypersdk.repository.repository import Repository

router = APIRouter(tags=["repository"], responses=ERRORS)
Dep = Annotated[Daemon, Depends(daemon)]
RECENT_JOBS = 1000  # how far back the last verification is looked for


class RepositoryStats(BaseModel):
    output: str = Field(description="the repository (resolved)")
    encrypted: bool
    compression: str
    vms: int
    generations: int
    chunk_count: int
    stored_bytes: int = Field(description="bytes of all chunk objects (after compression)")
    logical_bytes: int = Field(description="sum of every generation's disk sizes")
    dedup_ratio: float | None = Field(
        description="logical_bytes / stored_bytes; null while nothing is stored"
    )
    last_verify: Job | None = Field(description="the newest finished verification job")
    last_gc: Job | None = Field(description="the newest finished gc job")


@router.get("/repository", response_model=RepositoryStats)
def repository_stats(
    d: Dep,
    output: Annotated[
        str | None, Query(min_length=1, max_length=4096, pattern=r"^(/|s3://)[^\x00]*$")
    ] = None,
) -> dict[str, Any]:
    location = d.output(output)
    repo = Repository.open(location, password=d.config.repository_password)
    gens = catalog.summaries(catalog.list_generations(repo, None))
    chunk_count = stored = 0
    for _, size in repo.chunks.ids():
        chunk_count += 1
        stored += size
    logical = sum(int(g["total_size"]) for g in gens)
    return {
        "output": location,
        "encrypted": repo.encrypted,
        "compression": repo.config.compression,
        "vms": len({g["vm"] for g in gens}),
        "generations": len(gens),
        "chunk_count": chunk_count,
        "stored_bytes": stored,
        "logical_bytes": logical,
        "dedup_ratio": round(logical / stored, 3) if stored else None,
        "last_verify": _last_job(d, location, JobKind.VERIFY),
        "last_gc": _last_job(d, location, JobKind.GC),
    }


def _last_job(d: Daemon, location: str, kind: JobKind) -> dict[str, Any] | None:
    for job in d.store.find(kind=kind, limit=RECENT_JOBS):
        if job.output == location and job.done:
            return job.to_json()
    return None
