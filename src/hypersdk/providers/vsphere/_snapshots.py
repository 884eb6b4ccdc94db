"""Tasks and the snapshots this tool makes: create, remove, find leftovers of a crash.

Our snapshots are named ``hypersdk-backup-<utc>-<rand>`` (a backup's point in time) or
``hypersdk-cbt-stun-<utc>-<rand>`` (the stun/unstun that makes a CBT change take effect),
and their description names the host and process that made them. A snapshot with one of
these prefixes whose maker is not a live process on this host is a leftover of a crashed
run and is removed at the next session; one made by a live process is left alone (another
export is running) and the session refuses to start.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pyVmomi import vim

from hypersdk.errors import ConflictError, ProviderError
from hypersdk.providers.vsphere._faults import fault_message
from hypersdk.providers.vsphere._inventory import snapshot_tree

log = logging.getLogger(__name__)

BACKUP_PREFIX = "hypersdk-backup-"
STUN_PREFIX = "hypersdk-cbt-stun-"
PREFIXES = (BACKUP_PREFIX, STUN_PREFIX)
TASK_TIMEOUT = 3600.0
_OWNER = re.compile(r"host=(?P<host>\S+) pid=(?P<pid>\d+)")


def new_name(prefix: str) -> str:
    utc = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{prefix}{utc}-{secrets.token_hex(3)}"


def description() -> str:
    return f"made by hypersdk host={socket.gethostname()} pid={os.getpid()}; safe to delete"


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


def create(vm: Any, name: str, *, quiesce: bool = False) -> Any:
    task = vm.CreateSnapshot_Task(
        name=name, description=description(), memory=False, quiesce=quiesce
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
class Leftover:
    name: str
    snapshot: Any
    live_owner: str  # "" when the maker is gone


def _owner_alive(desc: str) -> str:
    m = _OWNER.search(desc or "")
    if not m or m.group("host") != socket.gethostname():
        return ""
    pid = int(m.group("pid"))
    if pid == os.getpid():
        return ""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return ""
    except PermissionError:
        pass
    return f"pid {pid} on {m.group('host')}"


def leftovers(vm: Any) -> list[Leftover]:
    out = []
    for node in snapshot_tree(vm):
        name = str(node.name)
        if name.startswith(PREFIXES):
            out.append(Leftover(name, node.snapshot, _owner_alive(str(node.description or ""))))
    return out


def remove_leftovers(vm: Any) -> list[str]:
    """Remove the snapshots of crashed runs; returns the messages that say so."""
    found = leftovers(vm)
    busy = [f for f in found if f.live_owner]
    if busy:
        f = busy[0]
        raise ConflictError(
            f"VM {vm.name} has snapshot {f.name} of a running export ({f.live_owner}); "
            "wait for it to finish"
        )
    messages = []
    for f in found:
        remove(f.snapshot, f.name)
        msg = f"removed snapshot {f.name} of VM {vm.name} left by an interrupted earlier run"
        log.warning(msg)
        messages.append(msg)
    return messages


def is_ours(node: Any) -> bool:
    return isinstance(node.snapshot, vim.vm.Snapshot) and str(node.name).startswith(PREFIXES)
