"""hyperctl policy list|run NAME|history NAME: the daemon's backup policies.

These talk to hypervisord through the Python SDK: ``--url`` (else ``HYPERSDK_URL``, else
http://localhost:8080); the token as the SDK finds it (``HYPERSDK_API_TOKEN``, else the
daemon's token file on this host for a loopback URL).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from hypersdk.cli.output import print_json
from hypersdk.client import HyperSDK, HyperSDKAPIError, NetworkError
from hypersdk.errors import ConflictError, ForbiddenPath, HyperSDKError, NotFoundError, UsageError

DEFAULT_URL = "http://localhost:8080"
WAIT_POLL = 0.5  # seconds between looks at a run with --wait

_BY_STATUS: dict[int, type[HyperSDKError]] = {
    403: ForbiddenPath,
    404: NotFoundError,
    409: ConflictError,
    422: UsageError,
}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("policy", help="the daemon's backup policies: list, run, history")
    verbs = p.add_subparsers(dest="verb", required=True, parser_class=type(p))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"hypervisord's URL (default $HYPERSDK_URL or {DEFAULT_URL})")
    common.add_argument("--json", action="store_true", help="print JSON")

    v = verbs.add_parser("list", parents=[common], help="every policy and its next run")
    v.set_defaults(func=run_list)
    v = verbs.add_parser("run", parents=[common], help="run a policy now")
    v.add_argument("name")
    v.add_argument(
        "--wait", action="store_true", help="wait for the run's end; exit 1 if it failed"
    )
    v.set_defaults(func=run_now)
    v = verbs.add_parser("history", parents=[common], help="a policy's runs, newest first")
    v.add_argument("name")
    v.add_argument("--limit", type=int, default=20, help="at most this many runs (default 20)")
    v.set_defaults(func=run_history)


def _client(args: argparse.Namespace) -> HyperSDK:
    url = args.url or os.environ.get("HYPERSDK_URL") or DEFAULT_URL
    return HyperSDK(url)


def _call(args: argparse.Namespace, what: str, *call: Any) -> Any:
    """One SDK call; its error as one of ours (one line, the right exit code)."""
    client = _client(args)
    try:
        return getattr(client, what)(*call)
    except NetworkError as err:
        raise HyperSDKError(
            f"cannot reach hypervisord at {client.base_url}: {err.message}"
        ) from err
    except HyperSDKAPIError as err:
        cls = _BY_STATUS.get(err.status or 0, HyperSDKError)
        raise cls(err.message) from err
    finally:
        client.close()


def run_list(args: argparse.Namespace) -> int:
    policies: list[dict[str, Any]] = _call(args, "list_policies")
    if args.json:
        print_json({"policies": policies})
        return 0
    table = Table(box=None)
    for col in ("POLICY", "SCHEDULE", "VMS", "REPOSITORY", "NEXT RUN", "RUNNING"):
        table.add_column(col)
    for p in policies:
        table.add_row(
            p["name"],
            p["schedule"],
            str(len(p["vms"])),
            p["output"],
            p["next_run"],
            p["running"] or "-",
        )
    Console(width=160).print(table)
    return 0


def run_now(args: argparse.Namespace) -> int:
    run: dict[str, Any] = _call(args, "run_policy", args.name)
    if args.wait:
        while run["state"] == "running":
            time.sleep(WAIT_POLL)
            runs = _call(args, "policy_history", args.name, 1000)
            run = next((r for r in runs if r["id"] == run["id"]), run)
    if args.json:
        print_json(run)
    else:
        jobs = ", ".join(f"{e['vm']} {e['job_id'] or e['state']}" for e in run["exports"])
        print(f"run {run['id']} of policy {args.name}: {run['state']}; exports: {jobs}")
        if run.get("reason"):
            print(f"  {run['reason']}")
    return 1 if run["state"] == "failed" else 0


def run_history(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be 1 or more")
    runs: list[dict[str, Any]] = _call(args, "policy_history", args.name, args.limit)
    if args.json:
        print_json({"runs": runs})
        return 0
    table = Table(box=None)
    for col in ("RUN", "TRIGGER", "SCHEDULED", "STARTED", "FINISHED", "STATE", "EXPORTS", "REASON"):
        table.add_column(col)
    for r in runs:
        done = sum(e["state"] == "succeeded" for e in r["exports"])
        removed = (r.get("prune") or {}).get("removed")
        exports = f"{done}/{len(r['exports'])}" + (f", pruned {removed}" if removed else "")
        table.add_row(
            r["id"],
            r["trigger"],
            r["scheduled"] or "-",
            r["started"] or "-",
            r["finished"] or "-",
            r["state"],
            exports,
            r["reason"] or "",
        )
    Console(width=200).print(table)
    return 0
