"""``create_app(config)``: the hypervisord FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from hypersdk import __version__
from hypersdk.daemon import errors, routes_cbt, routes_exports, routes_repository, routes_service
from hypersdk.daemon.auth import TokenAuth
from hypersdk.daemon.config import DaemonConfig
from hypersdk.daemon.jobs import JobStore
from hypersdk.daemon.runner import Runner
from hypersdk.daemon.state import Daemon


def create_app(config: DaemonConfig) -> FastAPI:
    """Open the job store (failing jobs an earlier daemon left running) and build the
    app. The workers stop, cancelling their jobs, when the app's lifespan ends."""
    store = JobStore(config.state_dir)
    store.recover()
    runner = Runner(config, store)
    state = Daemon(config, store, runner)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            runner.shutdown()
            store.close()

    app = FastAPI(
        title="hypervisord",
        version=__version__,
        description="HyperSDK REST daemon: CBT, incremental export jobs, repositories "
        "(contract: docs/api.md).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.daemon = state
    errors.install(app)
    for module in (routes_service, routes_cbt, routes_exports, routes_repository):
        app.include_router(module.router)
    if config.api_token:
        app.add_middleware(TokenAuth, token=config.api_token)
    return app
