"""hyperctl init: create a repository, encrypted with --encryption."""

from __future__ import annotations

import argparse

from hypersdk.cli.numbers import size_in
from hypersdk.cli.output import print_json
from hypersdk.cli.password import add_password_flag, ask_new_password, password_from
from hypersdk.errors import UsageError
from hypersdk.repository.keys import Password
from hypersdk.repository.repository import (
    DEFAULT_BLOCK_SIZE,
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    Repository,
)
from hypersdk.repository.storage import absolute_location


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("init", help="create a repository (encrypted with --encryption)")
    p.add_argument("--output", required=True, help="the repository folder to create")
    p.add_argument(
        "--encryption",
        action="store_true",
        help="seal everything with AES-256-GCM under a password (HYPERSDK_PASSWORD, "
        "--password-file or a prompt asked twice)",
    )
    p.add_argument(
        "--block-size",
        type=size_in(MIN_BLOCK_SIZE, MAX_BLOCK_SIZE),
        default=DEFAULT_BLOCK_SIZE,
        help="block size (a power of two from 64K to 16M; default 1M)",
    )
    add_password_flag(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root = absolute_location(args.output)
    if Repository.exists(root):
        raise UsageError(f"{root} is a repository already")
    password: Password | None = None
    if args.encryption:
        given = password_from(args).given()
        secret = given or ask_new_password(f"the new repository {root}")
        password = Password(value=secret)
    repo = Repository.open_or_init(
        root, block_size=args.block_size, password=password, encrypt=bool(args.encryption)
    )
    doc = {
        "output": repo.location,
        "id": repo.config.id,
        "encryption": repo.config.encryption,
        "block_size": repo.config.block_size,
        "key": repo.key_id,
    }
    if args.json:
        print_json(doc)
    else:
        kind = "encrypted repository" if repo.encrypted else "repository"
        print(f"created {kind} {repo.location} (id {repo.config.id})")
        if repo.encrypted:
            print("keep the password safe: without it the data cannot be read")
    return 0
