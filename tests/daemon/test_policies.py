"""Backup policies in a live hypervisord: runs on a cron schedule compressed to seconds,
against a qemu-storage-daemon VM and an offline qcow2 VM, with retention applied; a run
missed while the daemon was down runs once at start; a run still going when the next
is due is skipped with a record."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from hypersdk.daemon.policy_store import PolicyState, PolicyStore
from tests.daemon.live import Hypervisord, wait_job
from tests.qemu.helpers import image_bytes
from tests.rigs.qsd import MiB, QemuStorageDaemon, create_qcow2


def qemu_io(image: Path, command: str) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(image)], check=True, capture_output=True
    )


def write_policies(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def runs(http: httpx.Client, name: str) -> list[dict[str, Any]]:
    answer = http.get(f"/policies/{name}/history")
    assert answer.status_code == 200, answer.text
    result: list[dict[str, Any]] = answer.json()["runs"]
    return result


def wait_runs(
    http: httpx.Client, name: str, count: int, timeout: float = 20.0
) -> list[dict[str, Any]]:
    """The history once ``count`` runs have finished (newest first)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in runs(http, name) if r["state"] != "running"]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} runs of {name} did not finish: {runs(http, name)}")
        time.sleep(0.1)


def two_seconds_ahead(gap: int = 3) -> str:
    """A 6-field cron that fires twice in the next minute: ``gap`` and ``2*gap`` seconds
    from now (so the test sees exactly two scheduled runs)."""
    now = datetime.now(UTC)
    first = (now + timedelta(seconds=gap)).second
    second = (now + timedelta(seconds=2 * gap)).second
    return f"{first},{second} * * * * *"


def test_policy_runs_twice_on_schedule_with_retention(
    tmp_path: Path, qsd: QemuStorageDaemon
) -> None:
    rng = random.Random(12)
    image = tmp_path / "vm.qcow2"
    create_qcow2(image, 8 * MiB)
    qemu_io(image, "write -P 0x11 0 3M")
    qsd.write(0, rng.randbytes(4 * MiB))
    repo = tmp_path / "repo"
    with Hypervisord(tmp_path / "hvd", output=repo, allow=(tmp_path,)) as hvd:
        http = hvd.client()
        for vm in (qsd.locator, f"qcow2:{image}"):
            assert http.post("/cbt/enable", json={"vm_path": vm}).status_code == 200
        # Made once the daemon answers, so that both times are still ahead.
        policy = {
            "vms": [qsd.locator, f"qcow2:{image}"],
            "schedule": two_seconds_ahead(3),
            "retention": {"keep_last": 1},
            "max_concurrent": 2,
        }
        assert http.put("/policies/nightly", json=policy).status_code == 200
        first = wait_runs(http, "nightly", 1)[0]
        assert first["state"] == "succeeded", first
        assert first["trigger"] == "schedule" and first["scheduled"] is not None
        assert [e["result_mode"] for e in first["exports"]] == ["full", "full"]
        # New data before the second run: the first generation's blocks become garbage.
        qsd.write(MiB, rng.randbytes(MiB))
        qemu_io(image, "write -P 0x22 1M 1M")
        second = wait_runs(http, "nightly", 2)[0]
        assert second["state"] == "succeeded", second
        assert [e["result_mode"] for e in second["exports"]] == ["incremental", "incremental"]
        # Each export was a normal daemon job.
        for e in second["exports"]:
            job = http.get(f"/exports/{e['job_id']}").json()
            assert job["kind"] == "export" and job["state"] == "succeeded"
        prune = second["prune"]
        assert prune["removed"] == 2 and prune["kept"] == 2
        assert prune["gc"]["bytes_removed"] > 0

        gens = http.get("/generations").json()["generations"]
        assert sorted(g["id"] for g in gens) == sorted(e["generation"] for e in second["exports"])
        # The one generation left of each VM restores exactly.
        for vm, want in (
            (qsd.locator, qsd.read(0, 32 * MiB)),
            (f"qcow2:{image}", image_bytes(image, tmp_path)),
        ):
            to = tmp_path / f"restored-{len(want)}.raw"
            job = http.post("/restores", json={"vm": vm, "to": str(to)}).json()
            assert wait_job(http, job["id"])["state"] == "succeeded"
            assert to.read_bytes() == want

        listed = http.get("/policies").json()["policies"]
        assert [p["name"] for p in listed] == ["nightly"] and listed[0]["source"] == "api"
        assert listed[0]["retention"]["keep_last"] == 1 and listed[0]["max_concurrent"] == 2


def test_missed_run_runs_once_at_start(tmp_path: Path, qsd: QemuStorageDaemon) -> None:
    qsd.write(0, b"\x42" * MiB)
    policies = write_policies(
        tmp_path / "policies.toml",
        f"""
[[policies]]
name = "hourly"
vms = ["{qsd.locator}"]
schedule = "0 * * * *"
""",
    )
    hvd = Hypervisord(
        tmp_path / "hvd",
        output=tmp_path / "repo",
        allow=(tmp_path,),
        args=("--policies", str(policies)),
    )
    # The daemon was down for three days: 72 hourly runs were missed.
    store = PolicyStore(hvd.state_dir)
    three_days = datetime.now(UTC) - timedelta(days=3)
    store.save_state("hourly", PolicyState(last_scheduled=three_days.isoformat()))
    store.close()
    with hvd:
        http = hvd.client()
        found = wait_runs(http, "hourly", 1)
        time.sleep(1.2)  # two more looks at the schedule: no second catch-up
        found = runs(http, "hourly")
        assert len(found) == 1, found
        run = found[0]
        assert run["trigger"] == "catch-up" and run["state"] == "succeeded", run
        scheduled = datetime.fromisoformat(run["scheduled"].replace("Z", "+00:00"))
        assert scheduled.minute == 0 and datetime.now(UTC) - scheduled < timedelta(hours=1)
        next_run = http.get("/policies/hourly").json()["next_run"]
        assert next_run > run["scheduled"]
    # Started again within the hour: the caught-up time is remembered, nothing runs.
    with hvd:
        time.sleep(1.2)
        assert len(runs(hvd.client(), "hourly")) == 1


def test_run_still_going_when_the_next_is_due_is_skipped(
    tmp_path: Path, qsd: QemuStorageDaemon
) -> None:
    qsd.write(0, b"\x17" * MiB)
    policies = write_policies(
        tmp_path / "policies.yaml",
        f"""
policies:
  - name: often
    vms: ["{qsd.locator}"]
    schedule: "* * * * * *"
""",
    )
    with Hypervisord(
        tmp_path / "hvd",
        output=tmp_path / "repo",
        allow=(tmp_path,),
        args=("--policies", str(policies)),
    ) as hvd:
        http = hvd.client()
        os.kill(qsd.pid, signal.SIGSTOP)  # the VM stops answering: the export hangs
        try:
            deadline = time.monotonic() + 10
            while not any(r["state"] == "skipped" for r in runs(http, "often")):
                assert time.monotonic() < deadline, runs(http, "often")
                time.sleep(0.1)
        finally:
            os.kill(qsd.pid, signal.SIGCONT)
        history = runs(http, "often")
        skipped = next(r for r in history if r["state"] == "skipped")
        going = history[-1]  # the oldest: the run that was still going
        assert going["state"] == "running" or going["finished"] is not None
        assert f"still running (run {going['id']}" in skipped["reason"]
        assert skipped["trigger"] == "schedule" and skipped["exports"] == []
        # The run that was going ends well once the VM answers again.
        deadline = time.monotonic() + 15
        while (run := runs(http, "often")[-1])["state"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert run["id"] == going["id"] and run["state"] == "succeeded", run
