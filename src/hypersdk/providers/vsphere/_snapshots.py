"""Tasks and the snapshots this tool makes: create, remove, find leftovers of a crash.

Our snapshots are named ``hypersdk-backup-<utc>-<rand>`` (a backup's point in time) or
``hypersdk-cbt-stun-<utc>-<rand>`` (the stun/unstun that makes a CBT change take effect),
and their description names who made them:
``made by hypersdk host=<host> pid=<pid> session=<id>; safe to delete`` (descriptions
written before sessions had ids lack ``session=`` and are read the same way).

Only an export session sweeps (``remove_leftovers``); status, analyze and the estimate
remove nothing. A snapshot with one of our prefixes is, to a sweep, either *busy* (the
export refuses to start, with a ConflictError naming it) or a *leftover* (removed, and
said so):

- made by this process (host and pid ours): busy while a session of this process has
  it registered (``_live.LIVE``), a leftover of our own failed session otherwise;
- made by another process on this host: busy while that pid is alive, else a leftover;
- made on another host, or by an unknown maker (no description we can read): we cannot
  see whether that process lives, so busy until the snapshot is older (its
  ``createTime`` against the server's clock) than ``foreign_snapshot_max_age``
  (``VsphereSettings.foreign_snapshot_max_age_hours``, environment
  ``HYPERSDK_VSPHERE_FOREIGN_SNAPSHOT_MAX_AGE`` in hours, default 24), a leftover after.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypersdk.errors import ConflictError, ProviderError
from hypersdk.providers.connection import FOREIGN_SNAPSHOT_MAX_AGE_ENV
from hypersdk.providers.vsphere._faults import fault_message
from hypersdk.providers.vsphere._inventory import snapshot_tree
from hypersdk.providers.vsphere._live import LIVE

log = logging.getLogger(__name__)

BACKUP_PREFIX = "hypersdk-backup-"
STUN_PREFIX = "hypersdk-cbt-stun-"
PREFIXES = (BACKUP_PREFIX, STUN_PREFIX)
TASK_TIMEOUT = 3600.0
_OWNER = re.compile(r"host=(?P<host>\S+) pid=(?P<pid>\d+)(?: session=(?P<session>[0-9a-f]+))?")


def new_name(prefix: str) -> str:
    utc = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{prefix}{utc}-{secrets.token_hex(3)}"


def new_session_id() -> str:
    return secrets.token_hex(8)


def description(session_id: str) -> str:
    return (
        f"made by hypersdk host={socket.gethostname()} pid={os.getpid()} "
        f"session={session_id}; safe to delete"
    )


def wait_task(task: Any, what: str, timeout: float = TASK_TIMEOUT) -> Any:
    """Wait for a vSphere task; its fault becomes ProviderError. Returns the result."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        info = task.info
        state = str(info.state)
        if state == "success":
            return info.result
        if state == "error":
            err = info.error
            msg = fault_message(err) if err is not None else "unknown error"
            raise ProviderError(f"{what} failed: {msg}")
        if time.monotonic() > deadline:
            raise ProviderError(f"{what} did not finish within {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def create(vm: Any, name: str, session_id: str, *, quiesce: bool = False) -> Any:
    """Create our snapshot ``name``; the caller has registered it in ``LIVE`` already."""
    task = vm.CreateSnapshot_Task(
        name=name, description=description(session_id), memory=False, quiesce=quiesce
    )
    return wait_task(task, f"creating snapshot {name} of VM {vm.name}")


def remove(snapshot: Any, name: str) -> None:
    task = snapshot.RemoveSnapshot_Task(removeChildren=False)
    wait_task(task, f"removing snapshot {name}")


def remove_by_name(vm: Any, name: str) -> bool:
    """Remove the snapshot called ``name`` if it exists (a create whose wait was
    interrupted may still have made it). True if one was removed."""
    removed = False
    for node in snapshot_tree(vm):
        if node.name == name:
            remove(node.snapshot, name)
            removed = True
    return removed


@dataclass(frozen=True)
class Owner:
    """Who made a snapshot, from its description."""

    host: str
    pid: int
    session: str  # "" in descriptions written before session ids


def parse_owner(desc: str) -> Owner | None:
    m = _OWNER.search(desc or "")
    if not m:
        return None
    return Owner(m.group("host"), int(m.group("pid")), m.group("session") or "")


@dataclass(frozen=True)
class Found:
    """One snapshot of ours on the VM: ``busy`` says whose running export holds it
    ("" for a leftover that a sweep may remove), ``left_by`` who left it."""

    name: str
    snapshot: Any
    busy: str = ""
    left_by: str = ""
    advice: str = "wait for it to finish"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _age_text(age: timedelta) -> str:
    seconds = max(age.total_seconds(), 0.0)
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def classify(node: Any, *, now: Callable[[], datetime], max_age: timedelta) -> Found:
    """Busy or leftover, for one of our snapshots; the rules are in the module docstring."""
    name = str(node.name)
    snap = node.snapshot
    owner = parse_owner(str(node.description or ""))
    if owner is not None and owner.host == socket.gethostname():
        if owner.pid == os.getpid():
            if LIVE.holds(name, owner.session):
                return Found(name, snap, busy=f"a session of this process, pid {owner.pid}")
            return Found(name, snap, left_by=f"a failed session of this process, pid {owner.pid}")
        if _pid_alive(owner.pid):
            return Found(name, snap, busy=f"pid {owner.pid} on {owner.host}")
        return Found(name, snap, left_by=f"pid {owner.pid} on {owner.host}, which has ended")
    # Another host (or a maker we cannot name): whether it still runs cannot be seen
    # from here; only the snapshot's age, on the server's clock, can retire it.
    maker = f"pid {owner.pid} on host {owner.host}" if owner else "an unknown maker"
    advice = (
        f"it counts as running until it is {_age_text(max_age)} old "
        f"({FOREIGN_SNAPSHOT_MAX_AGE_ENV}, hours): wait, or delete the snapshot if that "
        "export is gone"
    )
    created = getattr(node, "createTime", None)
    if not isinstance(created, datetime):
        return Found(name, snap, busy=f"{maker}, creation time unknown", advice=advice)
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    age = now() - created
    if age >= max_age:
        return Found(name, snap, left_by=f"{maker}, {_age_text(age)} ago")
    return Found(name, snap, busy=f"{maker}, made {_age_text(age)} ago", advice=advice)


def ours(vm: Any, *, now: Callable[[], datetime], max_age: timedelta) -> list[Found]:
    """Our snapshots on the VM, each classified busy or leftover."""
    server_now: list[datetime] = []

    def now_once() -> datetime:  # one server call per look, and only if needed
        if not server_now:
            server_now.append(now())
        return server_now[0]

    return [
        classify(node, now=now_once, max_age=max_age)
        for node in snapshot_tree(vm)
        if str(node.name).startswith(PREFIXES)
    ]


def busy_error(vm: Any, found: Found) -> ConflictError:
    return ConflictError(
        f"VM {vm.name} has snapshot {found.name} of a running export ({found.busy}); {found.advice}"
    )


def remove_leftovers(vm: Any, *, now: Callable[[], datetime], max_age: timedelta) -> list[str]:
    """Remove the snapshots of crashed runs; returns the messages that say so. Refuses
    (ConflictError) while one of ours is busy. Only an export session calls this."""
    found = ours(vm, now=now, max_age=max_age)
    busy = [f for f in found if f.busy]
    if busy:
        raise busy_error(vm, busy[0])
    messages = []
    for f in found:
        remove(f.snapshot, f.name)
        msg = (
            f"removed snapshot {f.name} of VM {vm.name} left by an interrupted earlier run "
            f"({f.left_by})"
        )
        log.warning(msg)
        messages.append(msg)
    return messages
