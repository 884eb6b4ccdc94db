"""Sweep what a crashed backup left in a long-lived QEMU process.

A session's exports, jobs and fleecing nodes are named ``hypersdk-<pid>x<random>-...``
and its temp folder ``<tmp>/hypersdk-qemu-<pid>-...``. If that process is gone, its
sync=none backup job would keep copying every guest write into a fleecing file nobody
reads, for as long as the VM runs. The next session removes such leftovers first.

Only leftovers whose process is dead on this machine are touched: a session of another
running export is never disturbed. (A QMP unix socket is local, so the pid is ours to
check; in another pid namespace it could look dead — the documented limit.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from hypersdk.providers.qemu._qmp import QmpCommandError, QmpConnection

log = logging.getLogger(__name__)

_NAME = re.compile(r"^hypersdk-(\d+)x[0-9a-f]+-\d+-(fleece|job|export|bitmap)$")
_TMP = re.compile(r"^hypersdk-qemu-(\d+)-")


def session_id() -> str:
    """The id every name of a new session starts with: our pid, then randomness.
    QEMU node names hold at most 31 characters: "hypersdk-" + 7-digit pid + "x" + 4 hex
    + "-NN-fleece" is 31."""
    return f"{os.getpid()}x{os.urandom(2).hex()}"


def tmp_prefix() -> str:
    return f"hypersdk-qemu-{os.getpid()}-"


def _dead(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def _stale(name: object) -> bool:
    match = _NAME.match(str(name))
    return match is not None and _dead(int(match.group(1)))


def stale_folders() -> list[Path]:
    out = []
    for entry in Path(tempfile.gettempdir()).iterdir():
        match = _TMP.match(entry.name)
        if match and entry.is_dir() and _dead(int(match.group(1))):
            out.append(entry)
    return out


def sweep(qmp: QmpConnection) -> list[str]:
    """Remove exports, jobs and fleecing nodes of dead sessions; returns what went."""
    removed: list[str] = []
    for export in qmp.execute("query-block-exports"):
        if _stale(export.get("id")):
            with contextlib.suppress(QmpCommandError):
                qmp.execute("block-export-del", {"id": export["id"], "mode": "hard"})
            removed.append(f"export {export['id']}")
    for job in qmp.execute("query-block-jobs"):
        if _stale(job.get("device")):
            with contextlib.suppress(QmpCommandError):
                qmp.execute("block-job-cancel", {"device": job["device"], "force": True})
            removed.append(f"job {job['device']}")
    _wait(qmp, "query-block-exports", "id")
    _wait(qmp, "query-block-jobs", "device")
    for node in qmp.execute("query-named-block-nodes", {"flat": True}):
        name = node.get("node-name")
        if _stale(name) and str(name).endswith("-fleece"):
            with contextlib.suppress(QmpCommandError):
                qmp.execute("blockdev-del", {"node-name": name})
                removed.append(f"fleecing node {name}")
    for folder in stale_folders():
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(f"temp folder {folder}")
    if removed:
        log.warning("removed leftovers of a crashed backup: %s", ", ".join(removed))
    return removed


def stale_nbd_server() -> bool:
    """Whether a dead session's temp folder still holds its NBD server socket: then the
    NBD server running in QEMU is that session's and may be stopped."""
    return any((folder / "nbd.sock").exists() for folder in stale_folders())


def _wait(qmp: QmpConnection, query: str, key: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(_stale(item.get(key)) for item in qmp.execute(query)):
        if time.monotonic() > deadline:
            return
        time.sleep(0.02)
