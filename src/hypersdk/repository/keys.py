"""Key files of an encrypted repository: ``keys/<id>``, one per password.

Each key file wraps the repository's master key with a key that scrypt derives from one
password (docs/repository-format.md, "Key files"). Any key file opens the repository;
adding, removing or changing a password touches only key files, never the data.

A password is asked for lazily, through a ``Password`` source: a plain repository never
asks. It comes from ``HYPERSDK_PASSWORD``, a password file (``--password-file``, the
daemon's ``password_file``) or, for the CLI on a terminal, a prompt. It is kept only in
memory and never logged.
"""

from __future__ import annotations

import base64
import getpass
import json
import logging
import os
import secrets
import socket
import sys
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any

from hypersdk.errors import IntegrityError, NotFoundError, PasswordError, UsageError
from hypersdk.repository.crypto import (
    DEFAULT_COST,
    KEY_BYTES,
    MIN_LOG_N,
    TEST_COST,
    ScryptCost,
    unwrap_master,
    wrap_master,
)
from hypersdk.repository.manifest import iso, utc_now
from hypersdk.repository.storage.base import Storage

log = logging.getLogger(__name__)

FORMAT = "hypersdk-key"
VERSION = 1
CIPHER = "aes-256-gcm"
KEYS_DIR = "keys"
ENV_PASSWORD = "HYPERSDK_PASSWORD"
# Tests only: key files made while it is "1" use scrypt with log2 N = 10 (~1 ms). The
# cost is recorded in each key file and shown by ``hyperctl key list``; reading never
# depends on it, so it cannot weaken an existing key.
ENV_INSECURE_KDF = "HYPERSDK_INSECURE_KDF"
_MAX_LOG_N = 20  # 1 GiB of memory at r = 8: a forged key file cannot ask for more
_SALT_BYTES = 32


@dataclass(frozen=True)
class Password:
    """Where a repository's password comes from, in this order: ``HYPERSDK_PASSWORD``,
    ``file`` (its first line), a prompt on the terminal when ``prompt`` is set."""

    file: str | None = None
    prompt: bool = False
    env: str = ENV_PASSWORD
    value: str | None = field(default=None, repr=False)  # known already (asked twice)

    def given(self) -> str | None:
        """A password given without asking (environment or file), or None."""
        if self.value:
            return self.value
        value = os.environ.get(self.env)
        if value:
            return value
        if self.file is None:
            return None
        try:
            with open(self.file, encoding="utf-8") as f:
                line = f.readline()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise PasswordError(f"cannot read the password file {self.file}: {reason}") from None
        return line.rstrip("\r\n") or None

    def get(self, what: str = "the repository") -> str | None:
        """``given``, else a prompt when allowed and stdin is a terminal, else None."""
        value = self.given()
        if value or not self.prompt or not sys.stdin.isatty():
            return value
        try:
            return getpass.getpass(f"Password for {what}: ") or None
        except (EOFError, KeyboardInterrupt):
            return None


PasswordSource = Password


def new_key_cost() -> ScryptCost:
    if os.environ.get(ENV_INSECURE_KDF) == "1":
        log.warning("%s=1: the new key file uses a test-only scrypt cost", ENV_INSECURE_KDF)
        return TEST_COST
    return DEFAULT_COST


def _secret(password: str) -> bytes:
    # NFC: the same password typed on two systems gives the same bytes.
    return unicodedata.normalize("NFC", password).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: object, where: str) -> bytes:
    if not isinstance(text, str):
        raise IntegrityError(f"{where}: malformed key file")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise IntegrityError(f"{where}: malformed key file") from None


@dataclass(frozen=True)
class KeyFile:
    """One key file as stored (nothing in it is secret without a password)."""

    id: str
    repository_id: str
    created: str
    host: str
    user: str
    cost: ScryptCost
    salt: bytes
    wrapped: bytes  # nonce + AES-256-GCM(master key) + tag

    def _public(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "id": self.id,
            "repository_id": self.repository_id,
            "created": self.created,
            "host": self.host,
            "user": self.user,
            "kdf": {
                "name": "scrypt",
                "log_n": self.cost.log_n,
                "r": self.cost.r,
                "p": self.cost.p,
                "salt": _b64(self.salt),
            },
            "cipher": CIPHER,
        }

    def associated_data(self) -> bytes:
        """Every field but the wrapped key, as canonical JSON: editing any of them (the
        cost, the repository id, even the host) makes the key file fail to unlock."""
        doc = self._public()
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    def encode(self) -> bytes:
        doc = self._public()
        doc["master_key"] = _b64(self.wrapped)
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def decode(cls, raw: bytes, where: str) -> KeyFile:
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise IntegrityError(f"{where}: not a HyperSDK key file")
            if doc.get("version") != VERSION or doc.get("cipher") != CIPHER:
                raise IntegrityError(f"{where}: unsupported key file version or cipher")
            kdf = doc["kdf"]
            if not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
                raise IntegrityError(f"{where}: unsupported key derivation")
            log_n, r, p = kdf["log_n"], kdf["r"], kdf["p"]
            if not all(type(v) is int for v in (log_n, r, p)):
                raise IntegrityError(f"{where}: malformed key file")
            if not (MIN_LOG_N <= log_n <= _MAX_LOG_N and 1 <= r <= 32 and 1 <= p <= 16):
                raise IntegrityError(f"{where}: scrypt parameters out of range")
            fields = [doc[k] for k in ("id", "repository_id", "created", "host", "user")]
            if not all(isinstance(v, str) for v in fields):
                raise IntegrityError(f"{where}: malformed key file")
            key = cls(
                id=fields[0],
                repository_id=fields[1],
                created=fields[2],
                host=fields[3],
                user=fields[4],
                cost=ScryptCost(log_n, r, p),
                salt=_unb64(kdf["salt"], where),
                wrapped=_unb64(doc["master_key"], where),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"{where}: malformed key file ({type(exc).__name__})") from None
        if key.id != PurePosixPath(where).name:
            raise IntegrityError(f"{where}: the file name does not match its id")
        return key

    def unlock(self, password: str) -> bytes | None:
        return unwrap_master(
            self.wrapped, _secret(password), self.cost, self.salt, self.associated_data()
        )


def _who() -> tuple[str, str]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return socket.gethostname(), user


def make_key_file(
    master: bytes,
    password: str,
    repository_id: str,
    *,
    key_id: str | None = None,
    created: str | None = None,
) -> KeyFile:
    if not password:
        raise UsageError("an empty password is not allowed")
    if len(master) != KEY_BYTES:
        raise ValueError("master key must be 32 bytes")
    host, user = _who()
    unsealed = KeyFile(
        id=key_id or secrets.token_hex(8),
        repository_id=repository_id,
        created=created or iso(utc_now()),
        host=host,
        user=user,
        cost=new_key_cost(),
        salt=os.urandom(_SALT_BYTES),
        wrapped=b"",
    )
    wrapped = wrap_master(
        master, _secret(password), unsealed.cost, unsealed.salt, unsealed.associated_data()
    )
    return replace(unsealed, wrapped=wrapped)


class KeyStore:
    """The key files of one repository (``keys/<id>``), on any storage backend."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def _key(self, key_id: str) -> str:
        if not key_id or not all(c in "0123456789abcdef" for c in key_id):
            raise NotFoundError(f"no key {key_id!r} (key ids are hex)")
        return f"{KEYS_DIR}/{key_id}"

    def _names(self) -> list[str]:
        prefix = f"{KEYS_DIR}/"
        return sorted(
            info.key[len(prefix) :]
            for info in self.storage.list(prefix)
            if "/" not in info.key[len(prefix) :] and not info.key.endswith(".tmp")
        )

    def exists(self) -> bool:
        """Whether any key file is here."""
        return bool(self._names())

    def read_all(self, repository_id: str) -> tuple[list[KeyFile], list[str]]:
        """(readable key files of this repository, problems with the others)."""
        good: list[KeyFile] = []
        bad: list[str] = []
        for name in self._names():
            where = f"{KEYS_DIR}/{name}"
            try:
                key = KeyFile.decode(self.storage.get(where), where)
            except (IntegrityError, OSError) as exc:
                bad.append(f"{where}: {exc}" if isinstance(exc, OSError) else str(exc))
                continue
            if key.repository_id != repository_id:
                bad.append(f"{where}: belongs to another repository")
                continue
            good.append(key)
        return good, bad

    def create(self, key: KeyFile) -> None:
        """Add a new key file (never replaces one)."""
        if not self.storage.put_new(self._key(key.id), key.encode()):
            raise UsageError(f"key {key.id} exists already")

    def replace(self, key: KeyFile) -> None:
        """Replace a key file atomically (readers see the old one or the new one)."""
        self.storage.put_atomic(self._key(key.id), key.encode())

    def remove(self, key_id: str) -> None:
        key = self._key(key_id)
        if key_id not in self._names():
            raise NotFoundError(f"no key {key_id} in this repository")
        self.storage.delete(key)


def unlock(
    store: KeyStore, repository_id: str, password: PasswordSource | None, where: str
) -> tuple[bytes, str]:
    """(master key, id of the key file it came from). PasswordError if no password is
    given or none of the key files opens with it."""
    secret = (password or Password()).get(where)
    if not secret:
        raise PasswordError(
            f"{where} is encrypted: give its password (HYPERSDK_PASSWORD, --password-file "
            "or a terminal prompt)"
        )
    keys, bad = store.read_all(repository_id)
    for key in keys:
        master = key.unlock(secret)
        if master is not None:
            return master, key.id
    if not keys and bad:
        raise IntegrityError(f"{where}: no readable key file ({bad[0]})")
    if not keys:
        raise IntegrityError(f"{where} is encrypted but has no key files (keys/)")
    raise PasswordError(f"wrong password for {where} (it opens none of its key files)")


# -- managing the key files of an open repository -----------------------------------------
#
# These take the master key from the caller (a repository it unlocked) and hold
# locks/keys.lock exclusively, so two removals at once cannot leave no key.


@dataclass(frozen=True)
class KeyInfo:
    """What ``hyperctl key list`` shows of a key file: nothing secret."""

    id: str
    created: str
    host: str
    user: str
    kdf: str
    in_use: bool


def describe(store: KeyStore, repository_id: str, in_use: str | None) -> list[KeyInfo]:
    keys, bad = store.read_all(repository_id)
    for problem in bad:
        log.warning("%s", problem)
    out = []
    for k in keys:
        cost = f"scrypt N=2^{k.cost.log_n} r={k.cost.r} p={k.cost.p}"
        if k.cost.log_n < DEFAULT_COST.log_n:
            cost += " (weak: made for tests)"
        out.append(KeyInfo(k.id, k.created, k.host, k.user, cost, k.id == in_use))
    return sorted(out, key=lambda i: (i.created, i.id))


def add_key(store: KeyStore, master: bytes, repository_id: str, password: str) -> KeyFile:
    key = make_key_file(master, password, repository_id)
    store.create(key)
    return key


def remove_key(store: KeyStore, repository_id: str, key_id: str, in_use: str | None) -> None:
    """Remove a key file; refuses the last one, and the one that opened the repository
    (prove another password first: a typo must not lock anybody out)."""
    keys, _ = store.read_all(repository_id)
    ids = {k.id for k in keys}
    if key_id not in ids:
        raise NotFoundError(f"no key {key_id!r} in this repository (hyperctl key list)")
    if ids == {key_id}:
        raise UsageError(f"key {key_id} is the repository's last key; add another one first")
    if key_id == in_use:
        raise UsageError(
            f"key {key_id} is the one this password opens; remove it with another password"
        )
    store.remove(key_id)


def change_password(
    store: KeyStore, master: bytes, repository_id: str, key_id: str, password: str
) -> KeyFile:
    """Re-wrap the master key of key file ``key_id`` under a new password (new salt),
    replacing the file atomically: the old password stops working, the others do not."""
    keys, _ = store.read_all(repository_id)
    old = next((k for k in keys if k.id == key_id), None)
    if old is None:
        raise NotFoundError(f"no key {key_id!r} in this repository")
    key = make_key_file(master, password, repository_id, key_id=old.id, created=old.created)
    store.replace(key)
    return key
