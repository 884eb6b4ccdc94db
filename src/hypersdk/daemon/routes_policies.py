"""Backup policies: list, read, create or replace and delete (those made through the
API), run now, and the history of runs (daemon/scheduler.py runs them on schedule)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from hypersdk.daemon.models import PolicyCreate, PolicyInfo, PolicyList, PolicyRun, PolicyRunList
from hypersdk.daemon.policies import parse_policy
from hypersdk.daemon.responses import ERRORS
from hypersdk.daemon.scheduler import PolicyScheduler
from hypersdk.daemon.state import Daemon, daemon

router = APIRouter(tags=["policies"], responses=ERRORS)
Dep = Annotated[Daemon, Depends(daemon)]
Name = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


def scheduler(request: Request) -> PolicyScheduler:
    s: PolicyScheduler = request.app.state.policies
    return s


Sched = Annotated[PolicyScheduler, Depends(scheduler)]


@router.get("/policies", response_model=PolicyList)
def list_policies(s: Sched) -> dict[str, Any]:
    return {"policies": [s.status(p) for p in s.policies()]}


@router.get("/policies/{name}", response_model=PolicyInfo)
def get_policy(name: Name, s: Sched) -> dict[str, Any]:
    return s.status(s.get(name))


@router.put("/policies/{name}", response_model=PolicyInfo)
def put_policy(name: Name, body: PolicyCreate, s: Sched, d: Dep) -> dict[str, Any]:
    doc = body.model_dump(exclude_none=True)
    policy = parse_policy(doc, d.output, name=name, source="api")
    s.add_api_policy(policy)
    return s.status(policy)


@router.delete("/policies/{name}", response_model=PolicyInfo)
def delete_policy(name: Name, s: Sched) -> dict[str, Any]:
    policy = s.delete_api_policy(name)
    return {**policy.to_json(), **dict(next_run="", running=None)}  # it will not run


@router.post("/policies/{name}/run", response_model=PolicyRun, status_code=202)
def run_policy(name: Name, s: Sched) -> dict[str, Any]:
    return s.start_run(name).to_json()


@router.get("/policies/{name}/history", response_model=PolicyRunList)
def policy_history(
    name: Name, s: Sched, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    return {"runs": [r.to_json() for r in s.history(name, limit)]}
