"""Export jobs through a live hypervisord against a real qemu-storage-daemon."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest

from hypersdk.errors import ExportCancelled
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import restore_disk
from hypersdk.repository.verify import verify
from tests.daemon.live import Hypervisord, wait_job
from tests.rigs.qsd import MiB, QemuStorageDaemon


def disk_now(qsd: QemuStorageDaemon) -> bytes:
    qsd.flush()
    return qsd.read(0, qsd.size)


def test_full_then_incremental_restore_verify(
    hvd: Hypervisord, qsd: QemuStorageDaemon, repo: Path, tmp_path: Path
) -> None:
    rng = random.Random(3)
    qsd.write(0, rng.randbytes(3 * MiB))
    http = hvd.client()
    r = http.post("/cbt/enable", json={"vm_path": qsd.locator})
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True, "message": f"CBT enabled successfully for {qsd.locator}"}

    r = http.post("/exports", json={"vm_path": qsd.locator})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "export" and job["state"] in ("queued", "running")
    assert job["id"].startswith("j-") and job["output"] == str(repo)
    full = wait_job(http, job["id"])
    assert full["state"] == "succeeded", full
    assert full["mode"] == "full" and full["phase"] == "done"
    assert full["bytes_total"] == 3 * MiB and full["bytes_done"] == 3 * MiB
    assert full["result"]["mode"] == "full" and full["result"]["bytes_read"] == 3 * MiB
    assert full["started"] and full["finished"] and full["error"] is None
    full_data = disk_now(qsd)

    qsd.write(5 * MiB, rng.randbytes(100_000))
    status = http.post("/cbt/status", json={"vm_path": qsd.locator}).json()
    assert status["cbt_enabled"] is True and status["can_incremental"] is True
    assert status["last_export"]["generation"] == full["result"]["generation"]
    analysis = http.post("/incremental/analyze", json={"vm_path": qsd.locator}).json()
    assert analysis["can_incremental"] is True
    assert 0 < analysis["estimated_changed_bytes"] <= 2 * MiB

    r = http.post("/exports", json={"vm_path": qsd.locator, "incremental": True})
    inc = wait_job(http, r.json()["id"])
    assert inc["state"] == "succeeded", inc
    assert inc["mode"] == "incremental" and inc["reason"] == "Incremental export possible"
    assert inc["result"]["bytes_read"] <= 2 * MiB
    inc_data = disk_now(qsd)

    gens = http.get("/generations").json()["generations"]
    assert [g["type"] for g in gens] == ["full", "incremental"]
    assert [g["id"] for g in gens] == [full["result"]["generation"], inc["result"]["generation"]]
    vm = gens[0]["vm"]
    assert http.get("/generations", params={"output": str(repo), "vm": vm}).json() == {
        "generations": gens
    }

    for gen, expected in ((gens[0]["id"], full_data), ("latest", inc_data)):
        target = tmp_path / f"restored-{gen}.raw"
        r = http.post("/restores", json={"vm": vm, "generation": gen, "to": str(target)})
        assert r.status_code == 202, r.text
        done = wait_job(http, r.json()["id"])
        assert done["state"] == "succeeded", done
        assert done["kind"] == "restore" and done["result"]["path"] == str(target)
        assert done["result"]["capacity_bytes"] == 32 * MiB
        assert target.read_bytes() == expected

    r = http.post("/verifications", json={"vm": vm})
    assert r.status_code == 202, r.text
    ver = wait_job(http, r.json()["id"])
    assert ver["state"] == "succeeded" and ver["kind"] == "verify"
    assert ver["result"]["ok"] is True and ver["result"]["generations"] == 2

    listed = http.get("/exports").json()["jobs"]
    assert [j["kind"] for j in listed][-2:] == ["export", "export"]  # newest first
    only = http.get("/exports", params={"kind": "export", "state": "succeeded"}).json()["jobs"]
    assert {j["id"] for j in only} == {full["id"], inc["id"]}
    by_vm = http.get("/exports", params={"vm_path": qsd.locator, "limit": 1}).json()["jobs"]
    assert [j["id"] for j in by_vm] == [inc["id"]]

    metrics = http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'hypersdk_jobs_total{kind="export",state="succeeded"} 2' in metrics.text
    assert "hypersdk_export_duration_seconds_count 2" in metrics.text
    read = full["result"]["bytes_read"] + inc["result"]["bytes_read"]
    assert f"hypersdk_export_bytes_read_total {read}" in metrics.text
    assert json.loads(http.get("/health").text)["status"] == "ok"

    # restore and verify stop between blocks when their cancel Event is set
    stop = threading.Event()
    stop.set()
    repository = Repository.open(repo)
    manifest = repository.generation(vm, "latest")
    target = tmp_path / "cancelled.raw"
    with pytest.raises(ExportCancelled):
        restore_disk(repository, manifest, "disk0", target, cancel=stop)
    assert not target.exists() and not list(tmp_path.glob(".cancelled.raw.*"))
    with pytest.raises(ExportCancelled):
        verify(repository, [manifest], cancel=stop)
