"""HyperSDK (blocking) against a live hypervisord with a token and a real QEMU."""

from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import Any

import pytest

from hypersdk import (
    ConflictError,
    HyperSDK,
    HyperSDKAPIError,
    InvalidRequestError,
    JobTimeoutError,
    NetworkError,
    NotFoundError,
    ProviderError,
    UnauthorizedError,
)
from tests.client.conftest import TOKEN
from tests.daemon.live import Hypervisord, free_port
from tests.rigs.qsd import MiB, QemuStorageDaemon


def test_spec_example_flow(hvd: Hypervisord, qsd: QemuStorageDaemon, tmp_path: Path) -> None:
    data = random.Random(5).randbytes(2 * MiB)
    qsd.write(MiB, data)
    with HyperSDK(hvd.base_url, token=TOKEN) as client:
        assert client.health()["status"] == "ok"
        status = client.get_cbt_status(qsd.locator)
        assert status["cbt_enabled"] is False
        response = client.enable_cbt(qsd.locator)
        assert response["message"] == f"CBT enabled successfully for {qsd.locator}"
        status = client.get_cbt_status(qsd.locator)
        assert status["cbt_enabled"] and len(status["disks"]) == 1
        assert client.analyze_incremental_export(qsd.locator)["can_incremental"] is False

        seen: list[dict[str, Any]] = []
        job = client.export_vm(qsd.locator, compression="lz4", parallel=2)
        assert job["state"] in ("queued", "running") and job["kind"] == "export"
        done = client.wait_for_export(
            job["id"], timeout=60, poll_interval=0.05, progress=seen.append
        )
        assert done["state"] == "succeeded", done
        assert seen and seen[-1] == done
        assert len({repr(j) for j in seen}) == len(seen)  # only changes are reported

        qsd.write(0, b"\x01" * 4096)
        analysis = client.analyze_incremental_export(qsd.locator)
        assert analysis["can_incremental"] is True
        assert analysis["estimated_savings_bytes"] > 0
        inc = client.wait_for_export(client.export_vm(qsd.locator, incremental=True)["id"])
        assert inc["mode"] == "incremental" and inc["state"] == "succeeded"

        gens = client.list_generations()
        assert [g["type"] for g in gens] == ["full", "incremental"]
        assert client.list_generations(output=str(hvd.output), vm=gens[0]["vm"]) == gens
        jobs = client.list_exports(kind="export")
        assert [j["id"] for j in jobs] == [inc["id"], job["id"]]
        assert client.get_export(job["id"])["result"]["generation"] == gens[0]["id"]

        target = tmp_path / "disk.raw"
        restored = client.wait_for_export(client.restore(gens[0]["vm"], str(target))["id"])
        assert restored["state"] == "succeeded"
        qsd.flush()
        assert target.read_bytes() == qsd.read(0, qsd.size)
        checked = client.wait_for_export(client.verify(vm=gens[0]["vm"])["id"])
        assert checked["result"]["ok"] is True
        stats = client.repository_stats()
        assert stats["generations"] == 2 and stats["chunk_count"] > 0
        assert stats["last_verify"]["id"] == checked["id"]
        assert "hypersdk_jobs_total" in client.metrics()

        assert client.disable_cbt(qsd.locator)["success"] is True


def test_typed_errors(hvd: Hypervisord, tmp_path: Path) -> None:
    with HyperSDK(hvd.base_url, token=TOKEN) as client:
        with pytest.raises(NotFoundError) as nf:
            client.get_export("j-000000000000")
        assert nf.value.status == 404 and nf.value.code == "not_found"
        assert "j-000000000000" in nf.value.message
        with pytest.raises(NotFoundError):
            client.cancel_export("j-000000000000")
        with pytest.raises(InvalidRequestError) as inv:
            client.export_vm("qemu:/x", parallel=0)
        assert inv.value.status == 422 and inv.value.code == "invalid_argument"
        with pytest.raises(NotFoundError) as gone:
            client.get_cbt_status(f"qemu:{tmp_path / 'none.sock'}")
        assert gone.value.code == "not_found" and "none.sock" in gone.value.message
        dead = tmp_path / "dead.sock"
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(dead))  # the file stays, nobody listens
        with pytest.raises(ProviderError) as pf:
            client.get_cbt_status(f"qemu:{dead}")
        assert pf.value.code == "connection_failed"
        failing = client.export_vm(f"qemu:{dead}")
        final = client.wait_for_export(failing["id"], timeout=30)
        assert final["state"] == "failed"
        with pytest.raises(ConflictError) as conflict:
            client.cancel_export(failing["id"])
        assert conflict.value.status == 409
    with HyperSDK(hvd.base_url, token="wrong") as client:
        assert client.health()["status"] == "ok"
        with pytest.raises(UnauthorizedError) as un:
            client.list_exports()
        assert un.value.code == "unauthorized" and isinstance(un.value, HyperSDKAPIError)
    with HyperSDK(f"http://127.0.0.1:{free_port()}", timeout=2) as client:
        with pytest.raises(NetworkError) as te:
            client.health()
        assert te.value.__cause__ is not None and te.value.code == "network_error"


def test_wait_times_out(hvd: Hypervisord, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job that never finishes: JobTimeoutError (also a TimeoutError) carrying the last job."""
    with HyperSDK(hvd.base_url, token=TOKEN) as client:
        calls: list[str] = []

        def forever_running(job_id: str) -> dict[str, Any]:
            calls.append(job_id)
            return {"id": job_id, "state": "running", "bytes_done": len(calls)}

        monkeypatch.setattr(client, "get_export", forever_running)
        seen: list[dict[str, Any]] = []
        with pytest.raises(JobTimeoutError) as timeout:
            client.wait_for_export("j-x", timeout=0.3, poll_interval=0.05, progress=seen.append)
        assert isinstance(timeout.value, TimeoutError)
        assert timeout.value.job["state"] == "running"
        assert len(calls) >= 3 and len(seen) == len(calls)
