"""Serve sessions: a generation's disk over NBD on a unix socket (docs/api.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request

from hypersdk.daemon.models import ServeSession, ServeSessionCreate, ServeSessionList
from hypersdk.daemon.responses import ERRORS
from hypersdk.daemon.sessions import ServeSessions
from hypersdk.daemon.state import Daemon, daemon

router = APIRouter(tags=["serve"], responses=ERRORS)
Dep = Annotated[Daemon, Depends(daemon)]
SessionId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]


def sessions(request: Request) -> ServeSessions:
    found: ServeSessions = request.app.state.serve_sessions
    return found


Sessions = Annotated[ServeSessions, Depends(sessions)]


@router.post("/serve-sessions", response_model=ServeSession, status_code=201)
def start_session(body: ServeSessionCreate, d: Dep, s: Sessions) -> dict[str, Any]:
    output = d.output(body.output)
    return s.start(output, body.vm, body.generation, body.disk, body.writable).to_json()


@router.get("/serve-sessions", response_model=ServeSessionList)
def list_sessions(s: Sessions) -> dict[str, Any]:
    return {"sessions": [x.to_json() for x in s.list()]}


@router.get("/serve-sessions/{session_id}", response_model=ServeSession)
def get_session(session_id: SessionId, s: Sessions) -> dict[str, Any]:
    return s.get(session_id).to_json()


@router.delete("/serve-sessions/{session_id}", response_model=ServeSession)
def stop_session(session_id: SessionId, s: Sessions) -> dict[str, Any]:
    return s.stop(session_id).to_json()
