"""The smallest fleet: daemon -> Celery -> one worker exports; the daemon follows."""

from __future__ import annotations

from pathlib import Path

from hypersdk.repository.repository import Repository
from tests.daemon.live import Hypervisord, wait_job
from tests.fleet.rigs import RedisServer, Worker
from tests.rigs.qsd import MiB, create_qcow2


def test_one_worker_runs_an_export(redis_server: RedisServer, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    image = tmp_path / "vms" / "a.qcow2"
    image.parent.mkdir()
    create_qcow2(image, 8 * MiB)
    worker = Worker(tmp_path / "workers", redis_server.url, "w1")
    worker.start()
    try:
        with Hypervisord(
            tmp_path / "hvd", output=repo, allow=(tmp_path,), args=("--broker", redis_server.url)
        ) as hvd:
            worker.wait_ready()
            http = hvd.client()
            r = http.post("/exports", json={"vm_path": f"qcow2:{image}"})
            assert r.status_code == 202, r.text
            job = wait_job(http, r.json()["id"])
            assert job["state"] == "succeeded", (job, worker.log()[-3000:], hvd.log()[-3000:])
    finally:
        worker.stop()
    repo_ = Repository.open(str(repo))
    print(repo_)
