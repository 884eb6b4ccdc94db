"""Where the CLI gets a repository's password: ``HYPERSDK_PASSWORD``, ``--password-file``
or, on a terminal, a prompt. Never a flag with the password itself (it would show in
``ps`` and in shell history), never printed.

A new password (``hyperctl init --encryption``, ``key add``, ``key passwd``) comes from
``HYPERSDK_NEW_PASSWORD``, ``--new-password-file`` or a prompt asked twice.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from hypersdk.errors import PasswordError
from hypersdk.repository.keys import ENV_PASSWORD, Password

ENV_NEW_PASSWORD = "HYPERSDK_NEW_PASSWORD"


def add_password_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--password-file",
        metavar="FILE",
        help=f"read an encrypted repository's password from FILE's first line "
        f"(else {ENV_PASSWORD}, else a prompt on a terminal)",
    )


def add_new_password_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--new-password-file",
        metavar="FILE",
        help=f"the new password: FILE's first line (else {ENV_NEW_PASSWORD}, "
        "else a prompt on a terminal, asked twice)",
    )


def password_from(args: argparse.Namespace) -> Password:
    return Password(file=getattr(args, "password_file", None), prompt=True)


def new_password_from(args: argparse.Namespace, what: str) -> str:
    """The new password for ``what``; PasswordError when none is given and no terminal
    can ask, or the two prompts differ."""
    source = Password(file=getattr(args, "new_password_file", None), env=ENV_NEW_PASSWORD)
    value = source.given()
    if value:
        return value
    if not sys.stdin.isatty():
        raise PasswordError(
            f"no new password for {what}: set {ENV_NEW_PASSWORD} or give --new-password-file"
        )
    return ask_new_password(what)


def ask_new_password(what: str) -> str:
    """Ask twice on the terminal; PasswordError without one."""
    if not sys.stdin.isatty():
        raise PasswordError(
            f"no password for {what}: set {ENV_PASSWORD}, give --password-file or run on a terminal"
        )
    first = getpass.getpass(f"New password for {what}: ")
    if not first:
        raise PasswordError("an empty password is not allowed")
    if getpass.getpass("Repeat it: ") != first:
        raise PasswordError("the two passwords differ; nothing was changed")
    return first
