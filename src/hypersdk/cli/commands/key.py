"""hyperctl key list|add|remove|passwd: the key files (passwords) of an encrypted
repository. Every action first unlocks the repository with a current password."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from hypersdk.cli.commands import show_repository_warnings
from hypersdk.cli.output import print_json
from hypersdk.cli.password import (
    add_new_password_flag,
    add_password_flag,
    new_password_from,
    password_from,
)
from hypersdk.repository.keys import add_key, change_password, describe, remove_key
from hypersdk.repository.repository import Repository


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("key", help="list, add, remove or change the passwords of a repository")
    actions = p.add_subparsers(dest="action", required=True, parser_class=type(p))
    for name, text in (
        ("list", "show every key file: id, created, host, user, and the one in use"),
        ("add", "add a password (a new key file)"),
        ("remove", "remove a key file (never the last, nor the one in use)"),
        ("passwd", "change the password of the key file in use"),
    ):
        a = actions.add_parser(name, help=text)
        a.add_argument("--output", required=True, help="the repository folder")
        if name == "remove":
            a.add_argument("key_id", metavar="KEY", help="the id of the key file to remove")
        add_password_flag(a)
        if name in ("add", "passwd"):
            add_new_password_flag(a)
        a.add_argument("--json", action="store_true")
        a.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    show_repository_warnings()  # e.g. a key file that cannot be read
    repo = Repository.open(args.output, password=password_from(args))
    rid = repo.config.id
    with repo.managing_keys() as (store, master):
        if args.action == "add":
            key = add_key(
                store, master, rid, new_password_from(args, f"a new key of {repo.location}")
            )
            return _done(args, {"added": key.id}, f"added key {key.id}")
        if args.action == "passwd":
            assert repo.key_id is not None  # an encrypted repository was unlocked by one
            key = change_password(
                store, master, rid, repo.key_id, new_password_from(args, f"key {repo.key_id}")
            )
            return _done(args, {"changed": key.id}, f"changed the password of key {key.id}")
        if args.action == "remove":
            remove_key(store, rid, args.key_id, repo.key_id)
            return _done(args, {"removed": args.key_id}, f"removed key {args.key_id}")
        infos = describe(store, rid, repo.key_id)
    if args.json:
        print_json([asdict(i) for i in infos])
        return 0
    print(f"{'':1} {'ID':<16}  {'CREATED':<27}  {'HOST':<16}  {'USER':<12}  KDF")
    for i in infos:
        mark = "*" if i.in_use else " "
        print(f"{mark} {i.id:<16}  {i.created:<27}  {i.host:<16}  {i.user:<12}  {i.kdf}")
    return 0


def _done(args: argparse.Namespace, doc: dict[str, str], text: str) -> int:
    if args.json:
        print_json(doc)
    else:
        print(text)
    return 0
