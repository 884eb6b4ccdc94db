"""Redis re-delivers a task that runs longer than its visibility timeout, while the first
worker still runs it. The second delivery finds the job's live lease and does nothing: one
export, one generation. A delivery of a finished job does nothing either. And a running
export is cancelled through the daemon: nothing committed, nothing left in QEMU."""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypersdk.daemon.fleet import TASK, FleetSettings, celery_app
from hypersdk.repository.repository import Repository
from tests.daemon.live import Hypervisord, wait_job, wait_running
from tests.fleet.rigs import RedisServer, SlowQsd, Worker
from tests.rigs.qsd import MiB


@pytest.fixture
def sessions() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="hsf-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def slow(tmp_path: Path) -> Iterator[SlowQsd]:
    with SlowQsd(tmp_path / "vm", 8 * MiB, bytes_per_second=MiB) as vm:
        vm.write(0, random.Random(5).randbytes(5 * MiB))
        yield vm


def fleet(
    tmp_path: Path, redis: RedisServer, sessions: Path, *worker_args: str
) -> tuple[Hypervisord, list[Worker]]:
    config = tmp_path / "hvd.toml"
    config.write_text("[fleet]\nlease_seconds = 10\n")
    config.chmod(0o600)
    hvd = Hypervisord(
        tmp_path / "hvd",
        output=tmp_path / "repo",
        allow=(tmp_path,),
        args=("--broker", redis.url, "--config", str(config)),
    )
    workers = [
        Worker(tmp_path / "w", redis.url, f"w{i}", *worker_args, tmpdir=sessions) for i in (1, 2)
    ]
    return hvd, workers


def test_a_redelivered_running_export_is_not_run_twice(
    redis_server: RedisServer, tmp_path: Path, sessions: Path, slow: SlowQsd
) -> None:
    hvd, workers = fleet(
        tmp_path, redis_server, sessions, "--concurrency", "1", "--visibility-timeout", "2"
    )
    with hvd:
        try:
            for w in workers:
                w.start()
            for w in workers:
                w.wait_ready()
            http = hvd.client()
            r = http.post("/exports", json={"vm_path": slow.locator})
            job = wait_job(http, r.json()["id"], timeout=40)
            assert job["state"] == "succeeded", job
            logs = "".join(w.log() for w in workers)
            # Redis did deliver it again while it ran (the export takes ~5 s, the
            # visibility timeout is 2 s), and that delivery stepped aside.
            assert f"job {job['id']}: running on another worker" in logs, logs[-4000:]
            assert logs.count(f"job {job['id']}: succeeded") == 1

            # A late delivery of the finished job does nothing.
            app = celery_app(FleetSettings(redis_server.url))
            app.send_task(TASK, args=[job["id"], {"kind": "export"}, {}], task_id=job["id"])
            app.close()
            deadline_log = f"job {job['id']}: already finished"
            for _ in range(100):
                if deadline_log in "".join(w.log() for w in workers):
                    break
                wait_job(http, job["id"])
                __import__("time").sleep(0.05)
            assert deadline_log in "".join(w.log() for w in workers)
        finally:
            for w in workers:
                w.stop()
    repo = Repository.open(str(tmp_path / "repo"))
    assert [len(repo.generations(vm)) for vm in repo.vm_ids()] == [1]
    assert slow.export_ids() == {"guest"} and slow.job_ids() == set()


def test_cancel_a_running_export_on_a_worker(
    redis_server: RedisServer, tmp_path: Path, sessions: Path, slow: SlowQsd
) -> None:
    hvd, workers = fleet(tmp_path, redis_server, sessions)
    worker = workers[0]
    with hvd:
        try:
            worker.start()
            worker.wait_ready()
            http = hvd.client()
            job_id = http.post("/exports", json={"vm_path": slow.locator}).json()["id"]
            wait_running(http, job_id, min_bytes=1)
            r = http.delete(f"/exports/{job_id}")
            assert r.status_code == 200, r.text
            job = wait_job(http, job_id)
            assert job["state"] == "cancelled", job
            assert f"job {job_id}: cancelled" in worker.log()
        finally:
            worker.stop()
    repo = Repository.open(str(tmp_path / "repo"))
    assert all(not repo.generations(vm) for vm in repo.vm_ids())
    assert slow.export_ids() == {"guest"} and slow.job_ids() == set()
    assert not list(sessions.glob("hypersdk-qemu-*"))


def test_a_restarted_daemon_adopts_the_jobs_running_on_workers(
    redis_server: RedisServer, tmp_path: Path, sessions: Path, slow: SlowQsd
) -> None:
    hvd, workers = fleet(tmp_path, redis_server, sessions)
    worker = workers[0]
    try:
        worker.start()
        worker.wait_ready()
        with hvd:
            http = hvd.client()
            job_id = http.post("/exports", json={"vm_path": slow.locator}).json()["id"]
            wait_running(http, job_id, min_bytes=1)
        # the daemon is gone; the export goes on in the worker
        with hvd:
            job = wait_job(hvd.client(), job_id, timeout=30)
        assert job["state"] == "succeeded" and job["error"] is None, job
        assert job["result"]["mode"] == "full"
    finally:
        worker.stop()
