"""Which export a policy run makes for each VM (incremental, full, audit), with the
scheduler's clock injected: ``full_every_days`` and ``audit_every_days`` choose the mode,
and an audit that finds blocks CBT missed makes the VM's next run full. The scheduler
runs in-process over the daemon's real runner and job store, against a real
qemu-storage-daemon."""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hypersdk.daemon.app import allowed_paths
from hypersdk.daemon.config import DaemonConfig
from hypersdk.daemon.jobs import JobStore
from hypersdk.daemon.policies import parse_policy
from hypersdk.daemon.policy_store import PolicyRun, PolicyStore, RunState, VmState
from hypersdk.daemon.runner import Runner
from hypersdk.daemon.scheduler import PolicyScheduler, choose_mode, create_scheduler, iso
from hypersdk.daemon.state import Daemon
from hypersdk.providers.factory import open_provider
from tests.rigs.qsd import MiB, QemuStorageDaemon, create_qcow2

T0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def policy(**fields: Any) -> Any:
    doc = {"name": "p", "vms": ["qcow2:/vms/a.qcow2"], "schedule": "0 2 * * *", **fields}
    return parse_policy(doc, lambda out: out or "/repo")


def test_choose_mode_by_days() -> None:
    p = policy(full_every_days=7, audit_every_days=30)
    fresh = VmState(last_full=iso(T0), last_audit=iso(T0))
    assert choose_mode(p, fresh, T0 + timedelta(days=1))[0] == "incremental"
    assert choose_mode(p, fresh, T0 + timedelta(days=7))[0] == "full"
    mode, why = choose_mode(p, fresh, T0 + timedelta(days=30))
    assert mode == "audit" and "audit_every_days 30" in why  # an audit reads all: no full too
    assert choose_mode(p, VmState(last_audit=iso(T0)), T0)[0] == "full"  # no full yet
    assert choose_mode(p, VmState(), T0)[0] == "audit"  # never audited
    missed = VmState(last_full=iso(T0), last_audit=iso(T0), force_full="the audit found 3")
    assert choose_mode(p, missed, T0 + timedelta(days=1)) == ("full", "the audit found 3")
    plain = policy()
    assert choose_mode(plain, VmState(), T0 + timedelta(days=999))[0] == "incremental"


@pytest.fixture
def qsd(tmp_path: Path) -> Iterator[QemuStorageDaemon]:
    with QemuStorageDaemon(tmp_path / "qsd", size=8 * MiB) as daemon:
        yield daemon


class InProcess:
    def __init__(self, tmp_path: Path, doc: dict[str, Any]) -> None:
        self.config = DaemonConfig(
            state_dir=tmp_path / "state",
            output=str(tmp_path / "repo"),
            allow_paths=(str(tmp_path),),
            policies=(doc,),
        )
        self.jobs = JobStore(self.config.state_dir)
        self.runner = Runner(self.config, self.jobs)
        self.daemon = Daemon(self.config, self.jobs, self.runner, allowed_paths(self.config))
        self.store = PolicyStore(self.config.state_dir)
        self.clock = Clock()
        self.scheduler: PolicyScheduler = create_scheduler(self.daemon, self.store, self.clock)

    def run(self, name: str = "p") -> PolicyRun:
        started = self.scheduler.start_run(name)
        deadline = time.monotonic() + 30
        while (run := self.store.run(started.id)).state is RunState.RUNNING:
            assert time.monotonic() < deadline, run
            time.sleep(0.05)
        return run

    def close(self) -> None:
        self.scheduler.stop()
        self.runner.shutdown()
        self.store.close()
        self.jobs.close()


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    made: list[InProcess] = []

    def build(doc: dict[str, Any]) -> InProcess:
        made.append(InProcess(tmp_path, doc))
        return made[-1]

    yield build
    for p in made:
        p.close()


def enable_cbt(qsd: QemuStorageDaemon) -> None:
    provider = open_provider(qsd.locator)
    try:
        provider.enable_cbt()
    finally:
        provider.close()


def make_miss(qsd: QemuStorageDaemon, offset: int, data: bytes) -> None:
    """A write that CBT does not see: the checkpoint bitmaps are disabled around it."""
    names = list(qsd.bitmaps(qsd.node_name))
    for name in names:
        qsd.qmp("block-dirty-bitmap-disable", node=qsd.node_name, name=name)
    qsd.write(offset, data)
    for name in names:
        qsd.qmp("block-dirty-bitmap-enable", node=qsd.node_name, name=name)


def test_full_every_days_forces_a_full_export(make: Any, qsd: QemuStorageDaemon) -> None:
    qsd.write(0, b"\x31" * MiB)
    enable_cbt(qsd)
    p = make({"name": "p", "vms": [qsd.locator], "schedule": "0 2 * * *", "full_every_days": 7})
    first = p.run()
    assert first.state is RunState.SUCCEEDED, first
    assert (first.exports[0].mode, first.exports[0].result_mode) == ("full", "full")
    p.clock.now = T0 + timedelta(days=3)
    second = p.run()
    assert (second.exports[0].mode, second.exports[0].result_mode) == (
        "incremental",
        "incremental",
    )
    p.clock.now = T0 + timedelta(days=7, seconds=1)
    third = p.run()
    assert (third.exports[0].mode, third.exports[0].result_mode) == ("full", "full")
    assert "full_every_days 7" in third.exports[0].why


def test_an_audit_miss_makes_the_next_run_full(make: Any, qsd: QemuStorageDaemon) -> None:
    rng = random.Random(15)
    qsd.write(0, rng.randbytes(4 * MiB))
    enable_cbt(qsd)
    p = make({"name": "p", "vms": [qsd.locator], "schedule": "0 2 * * *", "audit_every_days": 30})
    first = p.run()  # never audited: an audit export (nothing to compare with yet)
    assert first.exports[0].mode == "audit" and first.state is RunState.SUCCEEDED, first
    p.clock.now = T0 + timedelta(days=1)
    assert p.run().exports[0].mode == "incremental"

    make_miss(qsd, 2 * MiB, rng.randbytes(4096))
    p.clock.now = T0 + timedelta(days=31)
    audited = p.run()
    export = audited.exports[0]
    assert export.mode == "audit" and export.blocks_missed == 1, audited
    assert audited.state is RunState.SUCCEEDED  # a miss does not fail the run

    p.clock.now = T0 + timedelta(days=32)
    after = p.run()
    assert after.exports[0].mode == "full" and after.exports[0].result_mode == "full"
    assert "found 1 blocks CBT missed" in after.exports[0].why
    p.clock.now = T0 + timedelta(days=33)
    assert p.run().exports[0].mode == "incremental"  # the full export cleared it


def test_a_clean_audit_leaves_the_next_run_incremental(make: Any, qsd: QemuStorageDaemon) -> None:
    qsd.write(0, b"\x44" * MiB)
    enable_cbt(qsd)
    p = make({"name": "p", "vms": [qsd.locator], "schedule": "0 2 * * *", "audit_every_days": 2})
    p.run()
    qsd.write(MiB, b"\x45" * MiB)  # seen by CBT
    p.clock.now = T0 + timedelta(days=2)
    audited = p.run()
    assert audited.exports[0].mode == "audit" and audited.exports[0].blocks_missed == 0
    p.clock.now = T0 + timedelta(days=3)
    assert p.run().exports[0].mode == "incremental"


def test_per_host_limit_keeps_exports_apart(make: Any, tmp_path: Path) -> None:
    images = []
    for name in ("a", "b", "c"):
        image = tmp_path / f"{name}.qcow2"
        create_qcow2(image, 4 * MiB)
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5 0 4M", str(image)],
            check=True,
            capture_output=True,
        )
        images.append(f"qcow2:{image}")
    vms = [
        {"vm": images[0], "host": "h1"},
        {"vm": images[1], "host": "h1"},
        {"vm": images[2], "host": "h2"},
    ]
    p = make(
        {"name": "p", "vms": vms, "schedule": "0 2 * * *", "max_concurrent": 3, "max_per_host": 1}
    )
    run = p.run()
    assert run.state is RunState.SUCCEEDED, run
    jobs = [p.jobs.get(e.job_id) for e in run.exports]
    a, b = jobs[0], jobs[1]
    assert a.finished is not None and b.started is not None
    assert b.started >= a.finished  # one host: one at a time
    assert jobs[2].state == "succeeded"


def test_the_history_keeps_the_newest_runs(tmp_path: Path) -> None:
    from hypersdk.daemon import policy_store
    from hypersdk.daemon.policy_store import Trigger

    store = PolicyStore(tmp_path)
    ids = []
    for _ in range(policy_store.KEEP_RUNS + 5):
        run = PolicyRun.new("p", Trigger.SCHEDULE, None)
        store.save_run(run)
        ids.append(run.id)
    store.save_run(PolicyRun.new("other", Trigger.MANUAL, None))
    kept = [r.id for r in store.runs("p", limit=5000)]
    assert kept == list(reversed(ids))[: policy_store.KEEP_RUNS]
    assert len(store.runs("other")) == 1
    store.close()
