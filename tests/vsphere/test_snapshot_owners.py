"""Whose snapshot is it? Status, analyze and the estimate never remove a snapshot; an
export removes only leftovers (issue 8, item 4). Against the lab, in one process, the
way the daemon runs: one provider (connection) per request."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from pyVim.task import WaitForTask

from hypersdk.engine.analysis import analyze
from hypersdk.engine.export import ExportReport, ExportRequest, run_export
from hypersdk.errors import ConflictError, ProviderError
from hypersdk.lab import VcsimLab
from hypersdk.providers.vsphere import VsphereProvider, _inventory, _reader, _snapshots
from hypersdk.providers.vsphere._live import LIVE
from hypersdk.providers.vsphere._provider import open_vsphere_provider
from hypersdk.repository.repository import Repository
from hypersdk.state.history import History
from tests.chain import restored_bytes
from tests.vsphere.conftest import KiB, MiB, flat, settings_of

BS = 64 * KiB
Open = Callable[[str], VsphereProvider]
HOST = socket.gethostname()


@dataclass
class Exported:
    """A VM with CBT on and one full export in ``repo``, as the daemon would have it."""

    path: str
    provider: VsphereProvider
    history: History
    request: ExportRequest
    full: ExportReport
    tmp: Path

    def repo(self) -> Repository:
        return Repository.open(self.request.output)

    def since(self) -> dict[str, str]:
        return {d.key: d.change_id for d in self.full_disks()}

    def full_disks(self) -> list[Any]:
        return self.provider.cbt_status().disks

    def names(self) -> list[str]:
        return [str(n.name) for n in _inventory.snapshot_tree(self.provider.vm)]

    def snapshot(self, name: str, description: str) -> None:
        task = self.provider.vm.CreateSnapshot_Task(
            name=name, description=description, memory=False, quiesce=False
        )
        WaitForTask(task)  # type: ignore[no-untyped-call]


@pytest.fixture()
def exported(provider_for: Open, lab: VcsimLab, tmp_path: Path) -> Callable[[str], Exported]:
    def make(path: str) -> Exported:
        rng = random.Random(path)
        for i in range(4):
            lab.write(path, i * MiB, rng.randbytes(256 * KiB))
        p = provider_for(path)
        p.enable_cbt()
        history = History(tmp_path / "state")
        request = ExportRequest(output=str(tmp_path / "repo"), incremental=True, block_size=BS)
        full = run_export(p, request, history)
        return Exported(path, p, history, request, full, tmp_path)

    return make


@pytest.fixture()
def live_child() -> Iterator[subprocess.Popen[bytes]]:
    """Another process of this host, alive for the test (stopped by its pid)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def test_status_analyze_and_estimate_during_an_export_leave_its_snapshot(
    exported: Callable[[str], Exported],
    provider_for: Open,
    lab: VcsimLab,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    e = exported("/DC0/vm/web")
    lab.write(e.path, 2 * MiB, random.Random(3).randbytes(3 * MiB))
    expected = flat(lab, e.path)  # the disk at the incremental's point in time

    # The export pauses at its first data read, its snapshot made.
    real = _reader.HttpRangeReader.pread
    reading, go_on = threading.Event(), threading.Event()

    def paused(self: _reader.HttpRangeReader, offset: int, length: int) -> bytes:
        reading.set()
        assert go_on.wait(30)
        return real(self, offset, length)

    monkeypatch.setattr(_reader.HttpRangeReader, "pread", paused)
    outcome: dict[str, Any] = {}

    def export() -> None:
        try:
            outcome["report"] = run_export(e.provider, e.request, e.history)
        except BaseException as err:
            outcome["error"] = err

    thread = threading.Thread(target=export)
    thread.start()
    try:
        assert reading.wait(30), outcome
        (name,) = e.names()
        assert name.startswith("hypersdk-backup-") and name in LIVE.names()
        # What /cbt/status and /incremental/analyze do meanwhile, in the same process:
        other = provider_for(e.path)
        assert other.cbt_status().enabled
        a = analyze(other, e.history, repo=e.repo())
        assert a.decision.can_incremental and a.decision.since is not None
        assert a.changed_bytes is None  # no estimate while the export holds the VM
        with pytest.raises(ConflictError, match=f"{name} of a running export \\(a session of"):
            other.estimate_changes(a.decision.since)
        with pytest.raises(ConflictError, match=f"{name} of a running export"):
            other.open_backup(None)  # a second export from this process waits its turn
        assert e.names() == [name]
    finally:
        go_on.set()
        thread.join(60)
    assert "error" not in outcome, outcome
    report = outcome["report"]
    assert report.mode == "incremental" and report.bytes_read == 3 * MiB
    assert e.names() == [] and name not in LIVE.names()
    repo = e.repo()
    got = restored_bytes(repo, repo.generation(report.vm, report.generation), "disk-2000", e.tmp)
    assert got == expected


def test_a_snapshot_of_a_live_process_of_this_host_is_busy_for_everyone(
    exported: Callable[[str], Exported], live_child: subprocess.Popen[bytes]
) -> None:
    e = exported("/DC0/vm/small")
    name = "hypersdk-backup-20260101T000000Z-0a0b0c"
    e.snapshot(name, f"made by hypersdk host={HOST} pid={live_child.pid} session=00ff; safe")
    assert e.provider.cbt_status().enabled
    assert analyze(e.provider, e.history, repo=e.repo()).changed_bytes is None
    with pytest.raises(ConflictError, match=f"pid {live_child.pid} on {HOST}"):
        e.provider.estimate_changes(e.since())
    with pytest.raises(ConflictError, match=f"has snapshot {name} of a running export") as err:
        run_export(e.provider, e.request, e.history)
    assert "\n" not in str(err.value)
    assert e.names() == [name]

    live_child.kill()
    live_child.wait()
    messages: list[str] = []
    e.provider.on_message = messages.append
    assert run_export(e.provider, e.request, e.history).mode == "incremental"
    assert messages == [
        f"removed snapshot {name} of VM small left by an interrupted earlier run "
        f"(pid {live_child.pid} on {HOST}, which has ended)"
    ]
    assert e.names() == []


def test_a_leftover_of_this_process_is_removed_by_the_next_export_only(
    exported: Callable[[str], Exported],
) -> None:
    e = exported("/DC0/vm/small")
    name = "hypersdk-backup-20260101T000000Z-0d0e0f"
    session = "0123456789abcdef"
    e.snapshot(name, f"made by hypersdk host={HOST} pid={os.getpid()} session={session}; safe")

    # While a session of this process has it registered, it is busy, to an export too.
    LIVE.register(session, name)
    try:
        with pytest.raises(ConflictError, match="a session of this process"):
            run_export(e.provider, e.request, e.history)
    finally:
        LIVE.unregister(name)
    assert e.names() == [name]

    # Unregistered: a leftover of a failed session of ours. Status, analyze and the
    # estimate still leave it alone (the estimate only says why it cannot count).
    assert e.provider.cbt_status().enabled
    assert analyze(e.provider, e.history, repo=e.repo()).changed_bytes is None
    with pytest.raises(ProviderError, match="an estimate removes nothing"):
        e.provider.estimate_changes(e.since())
    assert e.names() == [name]

    messages: list[str] = []
    e.provider.on_message = messages.append
    report = run_export(e.provider, e.request, e.history)
    assert report.mode == "incremental"
    assert messages == [
        f"removed snapshot {name} of VM small left by an interrupted earlier run "
        f"(a failed session of this process, pid {os.getpid()})"
    ]
    assert e.names() == []
    # With nothing in the way, the estimate counts exactly and leaves no snapshot behind.
    est = e.provider.estimate_changes({d["key"]: d["change_id"] for d in report.disks})
    assert est.exact and est.per_disk == {"disk-2000": 0}
    assert e.names() == []


@pytest.mark.parametrize(
    ("description", "maker"),
    [
        ("made by hypersdk host=backup-b.example pid=4242 session=aa55; safe to delete",
         "pid 4242 on host backup-b.example"),
        ("", "an unknown maker"),
    ],
)  # fmt: skip
def test_another_hosts_snapshot_is_busy_until_it_is_older_than_the_max_age(
    exported: Callable[[str], Exported], lab: VcsimLab, description: str, maker: str
) -> None:
    e = exported("/DC0/vm/small")
    name = "hypersdk-backup-20260101T000000Z-102030"
    e.snapshot(name, description)
    assert analyze(e.provider, e.history, repo=e.repo()).changed_bytes is None
    with pytest.raises(ConflictError) as err:
        run_export(e.provider, e.request, e.history)  # default max age: 24 h
    msg = str(err.value)
    assert f"has snapshot {name} of a running export ({maker}, made " in msg
    assert "until it is 24.0 h old (HYPERSDK_VSPHERE_FOREIGN_SNAPSHOT_MAX_AGE" in msg
    assert e.names() == [name]

    max_age = 0.5  # seconds
    young = open_vsphere_provider(
        e.path, replace(settings_of(lab), foreign_snapshot_max_age_hours=max_age / 3600)
    )
    with young:
        time.sleep(max_age + 0.2)  # the snapshot's age, on the server's clock, passes it
        messages: list[str] = []
        young.on_message = messages.append
        assert run_export(young, e.request, e.history).mode == "incremental"
    assert messages[0].startswith(
        f"removed snapshot {name} of VM small left by an interrupted earlier run ({maker}, "
    )
    assert e.names() == []


def test_a_cbt_stun_snapshot_is_registered_while_it_exists(
    provider_for: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = provider_for("/DC0/vm/small")
    seen: list[bool] = []
    real = _snapshots.remove

    def remove(snapshot: Any, name: str) -> None:
        seen.append(name in LIVE.names())  # still registered right before its removal
        real(snapshot, name)

    monkeypatch.setattr(_snapshots, "remove", remove)
    p.enable_cbt()
    assert seen == [True] and not LIVE.names()
