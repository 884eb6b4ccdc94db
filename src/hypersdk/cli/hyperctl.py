"""hyperctl: work with export repositories (and the vSphere lab)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hypersdk import __version__
from hypersdk.cli.output import OneLineParser, fail

# Each command lives in its own module with add_parser() and run().
COMMANDS = (
    "hypersdk.cli.commands.init",
    "hypersdk.cli.commands.generations",
    "hypersdk.cli.commands.restore",
    "hypersdk.cli.commands.serve",
    "hypersdk.cli.commands.verify",
    "hypersdk.cli.commands.gc",
    "hypersdk.cli.commands.delete",
    "hypersdk.cli.commands.prune",
    "hypersdk.cli.commands.status",
    "hypersdk.cli.commands.key",
    "hypersdk.cli.commands.copy",
    "hypersdk.cli.commands.policy",
    "hypersdk.cli.lab",
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="hyperctl", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hyperctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except (Exception, KeyboardInterrupt) as err:
        return fail("hyperctl", err, as_json=bool(getattr(args, "json", False)))


if __name__ == "__main__":
    sys.exit(main())
