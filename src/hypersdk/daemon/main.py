"""hypervisord: serve the HyperSDK REST API (docs/api.md) with uvicorn.

    hypervisord [--listen ADDR] [--port N] [--config FILE] [--output REPO]
                [--allow-path DIR ...] [--allow-devices] [--tls-cert PEM --tls-key PEM]
                [--state-dir DIR] [--max-concurrent-exports N] [--policies FILE]
                [--broker redis://HOST:PORT/DB]

Every route but /health needs the API token. It comes from HYPERSDK_API_TOKEN or the
config file (never a flag: flags show in ps); without one the daemon makes one in
<state dir>/api-token (mode 0600), which the SDKs on this host read. Requests may name
only paths inside --allow-path folders and the --output repository. A non-loopback
address needs --tls-cert and --tls-key. Contract: docs/api.md.

With --broker, jobs run on hyperworker processes through a Celery queue on Redis, and
the daemon follows them (docs/fleet.md); without it they run in this process.

At start it prints a sign-in link to the dashboard (/ui/) on stderr, the token in its
fragment, as Jupyter does: stderr is the operator's, so keep it out of shared logs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from hypersdk import __version__
from hypersdk.cmdline import OneLineParser
from hypersdk.errors import HyperSDKError

PROG = "hypervisord"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("--listen", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8080)")
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--output", help="default repository folder (always allowed)")
    p.add_argument(
        "--allow-path",
        action="append",
        metavar="DIR",
        help="a folder whose files, sockets and repositories requests may name (repeatable)",
    )
    p.add_argument(
        "--allow-devices",
        action="store_true",
        default=None,
        help="let restores write to block devices in allowed folders",
    )
    p.add_argument("--tls-cert", metavar="PEM", help="TLS certificate (serve HTTPS)")
    p.add_argument("--tls-key", metavar="PEM", help="TLS private key")
    p.add_argument("--state-dir", help="state folder (default ~/.hypersdk)")
    p.add_argument(
        "--policies", metavar="FILE", help="backup policies file (YAML, or TOML if *.toml)"
    )
    p.add_argument(
        "--broker",
        metavar="URL",
        help="distributed mode: the Redis broker (redis://HOST:PORT/DB) of hyperworker",
    )
    p.add_argument("--max-concurrent-exports", type=int, help="jobs run at once (default 2)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hypersdk.daemon.config import load_config
    from hypersdk.daemon.token import load_or_create_token
    from hypersdk.state.folder import prepare_state_dir

    try:
        config = load_config(
            listen=args.listen,
            port=args.port,
            state_dir=args.state_dir,
            output=args.output,
            max_concurrent_exports=args.max_concurrent_exports,
            allow_paths=args.allow_path,
            allow_devices=args.allow_devices,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            policies_file=args.policies,
            config_file=args.config,
            broker=args.broker,
        )
        prepare_state_dir(config.state_dir)
        token = config.api_token or load_or_create_token(config.state_dir)
    except HyperSDKError as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        return 2

    import uvicorn

    from hypersdk.daemon.app import create_app

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        app = create_app(config, token)
    except HyperSDKError as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        return 1
    # As Jupyter does: a link that signs the browser in (the token rides in the URL's
    # fragment, which the browser keeps to itself). On stderr: the operator's terminal.
    from hypersdk.daemon.routes_ui import sign_in_url

    scheme = "https" if config.tls_cert else "http"
    host = f"[{config.listen}]" if ":" in config.listen else config.listen
    if host in ("0.0.0.0", "[::]"):
        host = "127.0.0.1"
    sys.stderr.write(
        f"{PROG}: dashboard: {sign_in_url(f'{scheme}://{host}:{config.port}', token)}\n"
    )
    sys.stderr.flush()
    uvicorn.run(
        app,
        host=config.listen,
        port=config.port,
        log_level=args.log_level,
        access_log=args.log_level == "debug",
        timeout_graceful_shutdown=10,
        ssl_certfile=config.tls_cert,
        ssl_keyfile=config.tls_key,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
