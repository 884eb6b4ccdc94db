"""Locks on object storage: lease objects written with conditional PUTs.

A lease is a small JSON object (holder pid, host, start, expiry) that its holder
rewrites every ``lease / 3`` seconds with ``If-Match`` on the ETag it last wrote. Nobody
else touches a lease before it has expired; after that it may be taken over by a
conditional replace (``If-Match`` on the ETag that was read), so of two racing
takers one wins. A holder whose renewal fails (the object changed: it was taken over)
has lost the lock, and the backend refuses to write a manifest from then on.

Exclusive lock at ``key`` (one writer per VM): the object ``key`` itself, created with
``If-None-Match: *``.

Shared/exclusive lock at ``key`` (the repository lock): a shared holder creates its own
lease ``key/shared-<token>`` and then checks that no live ``key/exclusive`` exists; gc
creates ``key/exclusive`` and then checks that no live shared lease exists. Each side
writes before it looks, so of a shared holder and gc that start together at least one
sees the other and backs off (S3 reads are strongly consistent after a write).

Expiry is judged by the reader's clock against the holder's recorded expiry: clocks must
agree to well within a lease (default 120 s, ``HYPERSDK_LOCK_LEASE_S``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from hypersdk.errors import LockedError, RepositoryError

if TYPE_CHECKING:
    from hypersdk.repository.storage.s3 import S3Storage

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 120.0


def lease_seconds() -> float:
    raw = os.environ.get("HYPERSDK_LOCK_LEASE_S", "")
    try:
        value = float(raw) if raw else DEFAULT_LEASE_S
    except ValueError:
        raise RepositoryError(f"HYPERSDK_LOCK_LEASE_S={raw!r} is not a number") from None
    return max(value, 1.0)


def _record(lease_s: float) -> dict[str, object]:
    now = time.time()
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "expires": now + lease_s,
        "token": uuid.uuid4().hex,
    }


def _parse(data: bytes) -> dict[str, object]:
    try:
        doc = json.loads(data)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _live(holder: dict[str, object]) -> bool:
    expires = holder.get("expires")
    # A record that cannot be read has no valid expiry: it is treated as dead.
    return isinstance(expires, int | float) and expires > time.time()


def describe(holder: dict[str, object]) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"


@dataclass
class Lease:
    """One held lease, renewed by a thread until ``release``."""

    storage: S3Storage
    key: str
    record: dict[str, object]
    tag: str
    lease_s: float
    lost: str = ""  # why the lease was lost; empty while held
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._renew, name=f"lease-{self.key}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            expires = float(self.record["expires"])  # type: ignore[arg-type]
            record = dict(self.record, expires=time.time() + self.lease_s)
            try:
                tag = self.storage.replace_if(self.key, json.dumps(record).encode(), self.tag)
            except (OSError, RepositoryError) as exc:
                if time.time() >= expires:
                    self.lost = f"its renewal failed until it expired ({exc})"
                    return
                continue  # try again before it expires
            if tag is None:
                self.lost = "another process took it over"
                return
            self.record, self.tag = record, tag

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost:
            return
        try:
            current = self.storage.get_tagged(self.key)
            if current[1] == self.tag:
                self.storage.delete(self.key)
        except FileNotFoundError:
            pass
        except (OSError, RepositoryError) as exc:
            log.warning("could not release the lock %s: %s (it expires by itself)", self.key, exc)


def _take(
    storage: S3Storage, key: str, what: str, lease_s: float
) -> tuple[Lease, dict[str, object]]:
    """Create the lease ``key`` or take over an expired one; LockedError if it is live."""
    record = _record(lease_s)
    blob = json.dumps(record).encode()
    for _ in range(3):
        tag = storage.create(key, blob)
        if tag is not None:
            return Lease(storage, key, record, tag, lease_s), {}
        try:
            data, old_tag = storage.get_tagged(key)
        except FileNotFoundError:
            continue  # released meanwhile: create it again
        holder = _parse(data)
        if _live(holder):
            raise LockedError(f"{what} is locked by {describe(holder)}")
        tag = storage.replace_if(key, blob, old_tag)
        if tag is not None:
            log.warning("took over the expired lock %s of %s", key, describe(holder))
            return Lease(storage, key, record, tag, lease_s), holder
    raise LockedError(f"{what} is locked by another process (it changed while it was taken)")


def _live_holder(storage: S3Storage, prefix: str, *, clean: bool) -> dict[str, object] | None:
    """The record of a live lease under ``prefix``; expired ones are removed if ``clean``."""
    for info in storage.list(prefix):
        try:
            data, _ = storage.get_tagged(info.key)
        except FileNotFoundError:
            continue
        holder = _parse(data)
        if _live(holder):
            return holder
        if clean:
            with suppress(FileNotFoundError):
                storage.delete(info.key)
    return None


@contextmanager
def hold(
    storage: S3Storage, key: str, *, shared: bool | None, what: str
) -> Iterator[dict[str, object]]:
    """``shared=None``: the exclusive lock ``key``. ``shared`` True/False: the shared or
    exclusive side of the shared/exclusive lock ``key`` (see the module docstring)."""
    lease_s = lease_seconds()
    stale: dict[str, object] = {}
    if shared is None:
        lease, stale = _take(storage, key, what, lease_s)
    elif shared:
        lease, _ = _take(storage, f"{key}/shared-{uuid.uuid4().hex}", what, lease_s)
        try:
            data, _ = storage.get_tagged(f"{key}/exclusive")
            holder = _parse(data)
            if _live(holder):
                raise LockedError(f"{what} is locked by {describe(holder)}")
        except FileNotFoundError:
            pass
        except BaseException:
            lease.release()
            raise
    else:
        lease, stale = _take(storage, f"{key}/exclusive", what, lease_s)
        try:
            reader = _live_holder(storage, f"{key}/shared-", clean=True)
            if reader is not None:
                raise LockedError(f"{what} is locked by {describe(reader)}")
        except BaseException:
            lease.release()
            raise
    lease.start()
    storage.leases.append(lease)
    try:
        yield stale
    finally:
        storage.leases.remove(lease)
        lease.release()
