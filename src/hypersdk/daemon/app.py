"""``create_app(config)``: the hypervisord FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from hypersdk import __version__
from hypersdk.daemon import (
    errors,
    routes_cbt,
    routes_exports,
    routes_policies,
    routes_repository,
    routes_serve,
    routes_service,
    routes_stats,
    routes_ui,
)
from hypersdk.daemon.auth import TokenAuth
from hypersdk.daemon.config import DaemonConfig
from hypersdk.daemon.guards import BodyGuard, EventStreamLimit, LoopbackHost
from hypersdk.daemon.jobs import JobStore
from hypersdk.daemon.paths import AllowedPaths
from hypersdk.daemon.policy_store import PolicyStore
from hypersdk.daemon.runner import Runner
from hypersdk.daemon.scheduler import create_scheduler
from hypersdk.daemon.sessions import ServeSessions
from hypersdk.daemon.state import Daemon
from hypersdk.daemon.token import load_or_create_token
from hypersdk.state.folder import prepare_state_dir


def allowed_paths(config: DaemonConfig) -> AllowedPaths:
    """The operator's folders plus the default repository."""
    folders = [*config.allow_paths, *([config.output] if config.output else [])]
    return AllowedPaths.of(folders, allow_devices=config.allow_devices)


def _runner(config: DaemonConfig, store: JobStore) -> Runner:
    """Jobs run in this process, or with a broker on the fleet's workers (whose jobs
    outlive a restart of the daemon: adopted, not failed)."""
    if config.broker is None:
        store.recover()
        return Runner(config, store)
    from hypersdk.daemon.fleet import FleetRunner, fleet_settings

    settings = fleet_settings(config)
    assert settings is not None
    runner = FleetRunner(config, store, settings)
    runner.adopt()
    return runner


def create_app(config: DaemonConfig, token: str | None = None) -> FastAPI:
    """Open the job store (failing jobs an earlier daemon left running) and build the
    app. The workers stop, cancelling their jobs, when the app's lifespan ends.
    ``token``: the API token; default: the configured one, else the state folder's
    ``api-token`` file (made if missing)."""
    prepare_state_dir(config.state_dir)
    token = token or config.api_token or load_or_create_token(config.state_dir)
    store = JobStore(config.state_dir)
    runner = _runner(config, store)
    state = Daemon(config, store, runner, allowed_paths(config))
    sessions = ServeSessions(config.state_dir, password=config.repository_password)
    policy_store = PolicyStore(config.state_dir)
    policy_store.recover()
    try:
        scheduler = create_scheduler(state, policy_store)
    except BaseException:
        runner.shutdown()
        raise

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            sessions.close()
            scheduler.stop()  # no new runs or exports
            runner.shutdown()
            # The runs record how their jobs ended. In a fleet the jobs go on in the
            # workers and no one follows them now: a run going is left as after a crash
            # (failed "daemon restarted" at the next start; its jobs are adopted).
            scheduler.join(timeout=30.0 if config.broker is None else 1.0)
            policy_store.close()
            store.close()

    app = FastAPI(
        title="hypervisord",
        version=__version__,
        description="HyperSDK REST daemon: CBT, incremental export jobs, repositories "
        "(contract: docs/api.md).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        strict_content_type=True,  # the default since FastAPI 0.132; said out loud
    )
    app.state.daemon = state
    app.state.serve_sessions = sessions
    app.state.policies = scheduler
    errors.install(app)
    routes = (routes_service, routes_cbt, routes_exports, routes_repository, routes_serve)
    for module in (*routes, routes_policies, routes_stats, routes_ui):
        app.include_router(module.router)
    # Added innermost first: a request meets LoopbackHost, TokenAuth, EventStreamLimit,
    # BodyGuard, then the route.
    app.add_middleware(BodyGuard)
    app.add_middleware(EventStreamLimit, limit=config.max_event_streams)
    app.add_middleware(TokenAuth, token=token)
    if config.loopback:
        app.add_middleware(LoopbackHost)
    return app
