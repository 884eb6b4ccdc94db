"""Every kind of job goes through the fleet: a policy's exports, a restore and a verify
run on the worker (its log names them), and the daemon's records show their results."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.daemon.live import Hypervisord, wait_job
from tests.fleet.rigs import RedisServer, Worker
from tests.rigs.qsd import MiB, create_qcow2


def wait_run(http: httpx.Client, name: str, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        runs = http.get(f"/policies/{name}/history").json()["runs"]
        run = next((r for r in runs if r["id"] == run_id), None)
        if run is not None and run["state"] != "running":
            return run
        assert time.monotonic() < deadline, runs
        time.sleep(0.1)


def test_policy_restore_and_verify_jobs_run_on_the_worker(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    images = []
    for i in range(2):
        image = tmp_path / f"vm{i}.qcow2"
        create_qcow2(image, 8 * MiB)
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -P {i + 7} 1M 2M", str(image)],
            check=True,
            capture_output=True,
        )
        images.append(image)
    worker = Worker(tmp_path / "w", redis_server.url, "w1")
    worker.start()
    args = ("--broker", redis_server.url)
    try:
        with Hypervisord(
            tmp_path / "hvd", output=tmp_path / "repo", allow=(tmp_path,), args=args
        ) as hvd:
            worker.wait_ready()
            http = hvd.client()
            policy = {"vms": [f"qcow2:{p}" for p in images], "schedule": "0 2 * * *"}
            assert http.put("/policies/nightly", json=policy).status_code == 200
            r = http.post("/policies/nightly/run")
            assert r.status_code == 202, r.text
            run = wait_run(http, "nightly", r.json()["id"])
            assert run["state"] == "succeeded", run
            exports = run["exports"]
            assert [e["state"] for e in exports] == ["succeeded", "succeeded"]

            first = http.get(f"/exports/{exports[0]['job_id']}").json()
            target = tmp_path / "restored.raw"
            body = {"vm": first["result"]["vm"], "to": str(target)}
            restore = wait_job(http, http.post("/restores", json=body).json()["id"])
            assert restore["state"] == "succeeded", restore
            same = subprocess.run(
                ["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(target), str(images[0])],
                capture_output=True,
            )
            assert same.returncode == 0, same.stdout

            verify = wait_job(http, http.post("/verifications", json={}).json()["id"])
            assert verify["state"] == "succeeded" and verify["result"]["ok"] is True, verify
            assert verify["result"]["generations"] == 2
    finally:
        worker.stop()
    log = worker.log()
    for job_id in [e["job_id"] for e in exports] + [restore["id"], verify["id"]]:
        assert f"job {job_id}: succeeded" in log
