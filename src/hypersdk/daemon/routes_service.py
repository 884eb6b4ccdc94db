"""Service routes: health (no token needed) and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from hypersdk import __version__
from hypersdk.daemon import metrics
from hypersdk.daemon.models import Health
from hypersdk.daemon.responses import ERRORS
from hypersdk.daemon.state import Daemon, daemon

router = APIRouter(tags=["service"])
Dep = Annotated[Daemon, Depends(daemon)]


@router.get("/health", response_model=Health)
def health() -> dict[str, Any]:
    return {"status": "ok", "version": __version__}


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        401: ERRORS[401],
        200: {
            "description": "Prometheus text format",
            "content": {metrics.CONTENT_TYPE: {"schema": {"type": "string"}}},
        },
    },
)
def get_metrics(d: Dep) -> PlainTextResponse:
    return PlainTextResponse(metrics.render(d.store), media_type=metrics.CONTENT_TYPE)
