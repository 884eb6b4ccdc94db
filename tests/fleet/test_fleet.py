"""A fleet on real parts: redis-server on loopback, hypervisord --broker, two hyperworker
processes, eight VMs (qemu-storage-daemon and qcow2 images).

One worker is SIGKILLed in the middle of an export: the daemon sends the job again once
the dead worker's lease expires, the other worker removes the dead run's leftovers from
the QEMU and exports; every VM ends with exactly one generation, verify is clean, and the
per-datastore limit (1 here; all images are on one filesystem) held: no two exports
overlap in time, as recorded by the jobs."""

from __future__ import annotations

import itertools
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from hypersdk.daemon.fleet import read_status, redis_client
from hypersdk.repository.repository import Repository
from tests.daemon.live import Hypervisord, wait_job, wait_running
from tests.fleet.rigs import RedisServer, SlowQsd, Worker
from tests.rigs.qsd import MiB, QemuStorageDaemon, create_qcow2

LEASE = 2  # seconds: a dead worker's job is sent again this soon


def daemon(tmp_path: Path, redis: RedisServer, repo: Path, fleet: str) -> Hypervisord:
    config = tmp_path / "hvd.toml"
    config.write_text(f"[fleet]\n{fleet}\n")
    config.chmod(0o600)
    args = ("--broker", redis.url, "--config", str(config))
    return Hypervisord(tmp_path / "hvd", output=repo, allow=(tmp_path,), args=args)


def workers(tmp_path: Path, redis: RedisServer, sessions: Path, *args: str) -> list[Worker]:
    return [
        Worker(tmp_path / "workers", redis.url, f"w{i}", *args, tmpdir=sessions) for i in (1, 2)
    ]


def qcow2_vm(folder: Path, name: str, rng: random.Random) -> str:
    image = folder / f"{name}.qcow2"
    create_qcow2(image, 8 * MiB)
    offset = rng.randrange(0, 4) * MiB
    pattern = rng.randrange(1, 255)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} 2M", str(image)],
        check=True,
        capture_output=True,
    )
    return f"qcow2:{image}"


def worker_pid(redis: RedisServer, job_id: str) -> int:
    status = read_status(redis_client(redis.url), job_id)
    return int(str(status["worker"]).rsplit(":", 1)[1])


def generations(repo: Path) -> dict[str, int]:
    r = Repository.open(str(repo))
    return {vm: len(r.generations(vm)) for vm in r.vm_ids()}


def verify_clean(http: httpx.Client) -> dict[str, Any]:
    r = http.post("/verifications", json={})
    assert r.status_code == 202, r.text
    job = wait_job(http, r.json()["id"])
    assert job["state"] == "succeeded", job
    return job


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


@pytest.fixture
def sessions() -> Iterator[Path]:
    """The workers' TMPDIR (their QEMU sessions' folders): short, for unix socket paths."""
    folder = Path(tempfile.mkdtemp(prefix="hsf-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_eight_vms_a_killed_worker_and_the_datastore_limit(
    redis_server: RedisServer, tmp_path: Path, stack: ExitStack, sessions: Path
) -> None:
    rng = random.Random(13)
    repo = tmp_path / "repo"
    vms_dir = tmp_path / "vms"
    vms_dir.mkdir()
    slow = stack.enter_context(SlowQsd(vms_dir / "slow", 8 * MiB, bytes_per_second=2 * MiB))
    slow.write(0, rng.randbytes(6 * MiB))
    qsds: list[QemuStorageDaemon] = [slow]
    for i in range(3):
        q = stack.enter_context(QemuStorageDaemon(vms_dir / f"qsd{i}", size=8 * MiB))
        q.write(i * MiB, rng.randbytes(2 * MiB))
        qsds.append(q)
    locators = [q.locator for q in qsds] + [qcow2_vm(vms_dir, f"img{i}", rng) for i in range(4)]

    hvd = stack.enter_context(
        daemon(tmp_path, redis_server, repo, f"datastore_limit = 1\nlease_seconds = {LEASE}")
    )
    w1, w2 = workers(tmp_path, redis_server, sessions, "--concurrency", "2")
    for w in (w1, w2):
        stack.callback(w.stop)
        w.start()
    for w in (w1, w2):
        w.wait_ready()
    http = hvd.client()

    jobs = []
    for locator in locators:  # the slow VM first: it runs while the others wait
        r = http.post("/exports", json={"vm_path": locator})
        assert r.status_code == 202, r.text
        jobs.append(r.json()["id"])
    wait_running(http, jobs[0], min_bytes=1)
    victim = {w.pid: w for w in (w1, w2)}[worker_pid(redis_server, jobs[0])]
    survivor = w2 if victim is w1 else w1
    victim.kill()

    done = [wait_job(http, j, timeout=60) for j in jobs]
    assert [j["state"] for j in done] == ["succeeded"] * 8, done
    # the killed export was taken again and finished by the other worker
    assert worker_pid(redis_server, jobs[0]) == survivor.pid
    assert f"job {jobs[0]}: succeeded" in survivor.log()
    # ... after removing what the dead run had made in the QEMU (export, job, fleecing)
    assert "removed leftovers of a failed backup: export hypersdk-" in survivor.log()

    # exactly one generation per VM: none lost, none committed twice
    assert sorted(generations(repo).values()) == [1] * 8
    report = verify_clean(http)["result"]
    assert report["ok"] is True and report["generations"] == 8, report

    # nothing left on the hypervisors: only the rigs' own export, no job, no fleecing node
    for q in qsds:
        assert q.export_ids() == {"guest"}, q.export_ids()
        assert q.job_ids() == set()
        assert not [n for n in q.node_names() if n.startswith("hypersdk-")]
    assert not list(sessions.glob("hypersdk-qemu-*"))

    # the datastore limit held: one export at a time, as the jobs recorded it
    spans = sorted((j["started"], j["finished"]) for j in done)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, spans

    survivor.stop()
    assert victim.proc is None and survivor.proc is None
