"""hyperworker: run hypervisord's jobs in a fleet (docs/fleet.md).

    hyperworker --broker redis://HOST:PORT/DB [--concurrency N] [--config FILE]
                [--state-dir DIR] [--name NAME] [--visibility-timeout S]
                [--log-level LEVEL]

Takes export, restore and verify jobs from the Celery queue that ``hypervisord --broker``
fills, runs them exactly as the daemon would (the same code), and reports their progress
and results through Redis, where the daemon follows them. Run any number of workers, on
any machines that reach the hypervisors and the repositories (a shared folder or S3).
``--config`` is the daemon's TOML file (its [vsphere] table, password_file, state_dir).
At most ``--concurrency`` jobs run at once here; the fleet's per-datastore and per-host
limits and the lease time come with each job from the daemon. Give every worker the same
``--state-dir`` on the shared folder: it holds the export history incrementals start from.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from hypersdk import __version__
from hypersdk.cmdline import OneLineParser
from hypersdk.errors import HyperSDKError, UsageError

PROG = "hyperworker"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("--broker", help="the Redis broker, redis://HOST:PORT/DB (or HYPERSDK_BROKER)")
    p.add_argument("--concurrency", type=int, default=2, help="jobs run at once here (default 2)")
    p.add_argument("--config", help="the daemon's TOML configuration file")
    p.add_argument("--state-dir", help="state folder (default ~/.hypersdk)")
    p.add_argument("--name", help="this worker's name (default: host:pid)")
    p.add_argument(
        "--visibility-timeout",
        type=float,
        help="Redis re-delivers an unacknowledged task after this (default 600)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def make_app(settings: Any, config: Any) -> Any:
    """The Celery app with the one task, bound to this worker's config."""
    from hypersdk.daemon.fleet import TASK, celery_app, redis_client
    from hypersdk.fleet.execute import run_job

    app = celery_app(settings)
    client = redis_client(settings.broker)
    log = logging.getLogger("hyperworker")

    @app.task(name=TASK, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
    def hypersdk_run_job(job_id: str, spec: Mapping[str, Any], rules: Mapping[str, Any]) -> None:
        outcome = run_job(config, client, job_id, spec, rules)
        log.info("job %s: %s", job_id, outcome)

    return app


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hypersdk.daemon.config import load_config
    from hypersdk.daemon.fleet import fleet_settings

    try:
        if args.concurrency < 1 or args.concurrency > 64:
            raise UsageError("--concurrency must be 1 to 64")
        config = load_config(state_dir=args.state_dir, config_file=args.config, broker=args.broker)
        if config.broker is None:
            raise UsageError("give --broker redis://HOST:PORT/DB (or HYPERSDK_BROKER)")
        settings = fleet_settings(config)
        assert settings is not None
        import dataclasses

        if args.visibility_timeout is not None:
            settings = dataclasses.replace(settings, visibility_timeout=args.visibility_timeout)
    except HyperSDKError as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    app = make_app(settings, config)
    name = args.name or "hyperworker@%h"
    app.worker_main(
        [
            "worker",
            "--pool=threads",  # one process: when it dies, its jobs die with it
            f"--concurrency={args.concurrency}",
            f"--loglevel={args.log_level.upper()}",
            f"--hostname={name}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
