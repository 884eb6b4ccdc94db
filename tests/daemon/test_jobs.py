"""Jobs are typed records with one state vocabulary, and the store tells watchers of a
job (the SSE streams) about every change of it."""

from __future__ import annotations

import ast
import itertools
import random
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import hypersdk.daemon
from hypersdk.daemon.jobs import FINISHED, STATES, Job, JobKind, JobState, JobStore
from hypersdk.errors import NotFoundError
from tests.daemon.live import Hypervisord
from tests.rigs.qsd import MiB, QemuStorageDaemon

DAEMON = Path(hypersdk.daemon.__file__).parent


def test_state_names_are_written_once() -> None:
    """The store, the runner, the routes and the models use JobState; a state spelled as
    a string anywhere else in the daemon is a second vocabulary."""
    names = {s.value for s in JobState}
    found = []
    for path in sorted(DAEMON.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        enum_body = {
            id(n)
            for cls in ast.walk(tree)
            if isinstance(cls, ast.ClassDef) and cls.name == "JobState"
            for n in ast.walk(cls)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in names and id(node) not in enum_body:
                found.append(f"{path.name}:{node.lineno} {node.value!r}")
    assert not found, "state names outside JobState:\n" + "\n".join(found)


def test_vocabulary() -> None:
    assert [s.value for s in STATES] == ["queued", "running", "succeeded", "failed", "cancelled"]
    assert {s for s in JobState if s.finished} == FINISHED
    assert not JobState.RUNNING.finished and JobState.CANCELLED.finished


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path)


def test_store_keeps_typed_jobs(store: JobStore) -> None:
    job = store.add(Job.new(JobKind.EXPORT, "qcow2:/vm.qcow2", "/repo"))
    assert store.get(job.id) == job and job.state is JobState.QUEUED and not job.done
    running = store.update(job.id, state=JobState.RUNNING, phase="copying", bytes_done=5)
    assert store.get(job.id) == running
    assert running.state is JobState.RUNNING and running.bytes_done == 5
    assert store.find(state=JobState.RUNNING) == [running]
    assert store.find(state=JobState.QUEUED) == []
    assert store.find(kind=JobKind.EXPORT, vm_path="qcow2:/vm.qcow2") == [running]
    with pytest.raises(TypeError):
        store.update(job.id, stat="failed")  # a misspelt field is an error, not a new key
    with pytest.raises(NotFoundError):
        store.get("j-nope")
    assert store.counts() == {("export", "running"): 1}


def test_the_json_document_is_the_api_object(store: JobStore) -> None:
    job = store.add(Job.new(JobKind.RESTORE, None, "/repo"))
    doc = job.to_json()
    assert doc["state"] == "queued" and doc["kind"] == "restore"
    assert Job.from_json(doc) == job
    assert Job.from_json({**doc, "added_later": 1}) == job  # newer documents still load


def test_recover_fails_what_an_earlier_daemon_left(tmp_path: Path) -> None:
    first = JobStore(tmp_path)
    queued = first.add(Job.new(JobKind.EXPORT, "a", "/r"))
    running = first.add(Job.new(JobKind.VERIFY, None, "/r"))
    first.update(running.id, state=JobState.RUNNING)
    done = first.add(Job.new(JobKind.EXPORT, "b", "/r"))
    first.update(done.id, state=JobState.SUCCEEDED)
    first.close()
    again = JobStore(tmp_path)
    assert again.recover() == 2
    for job_id in (queued.id, running.id):
        job = again.get(job_id)
        assert job.state is JobState.FAILED and job.error is not None
        assert job.error["code"] == "daemon_restarted"
    assert again.get(done.id).state is JobState.SUCCEEDED
    # the column the filters use follows the document
    with sqlite3.connect(tmp_path / "daemon" / "jobs.db") as db:
        states = dict(db.execute("SELECT id, state FROM jobs").fetchall())
    assert states == {queued.id: "failed", running.id: "failed", done.id: "succeeded"}


def test_watchers_hear_every_change_of_their_job(store: JobStore) -> None:
    job = store.add(Job.new(JobKind.EXPORT, "a", "/r"))
    other = store.add(Job.new(JobKind.EXPORT, "b", "/r"))
    heard: list[str] = []
    stop = store.watch(job.id, lambda: heard.append(threading.current_thread().name))

    def change() -> None:
        store.update(job.id, bytes_done=1)
        store.update(other.id, bytes_done=1)  # another job: not this watcher's business

    worker = threading.Thread(target=change, name="runner")
    worker.start()
    worker.join()
    assert heard == ["runner"]  # told at once, by the thread that changed it
    stop()
    store.update(job.id, bytes_done=2)
    assert heard == ["runner"]


def test_a_failing_watcher_does_not_fail_the_job(store: JobStore) -> None:
    job = store.add(Job.new(JobKind.EXPORT, "a", "/r"))
    heard: list[int] = []

    def broken() -> None:
        raise RuntimeError("event loop closed")

    store.watch(job.id, broken)
    store.watch(job.id, lambda: heard.append(1))
    updated = store.update(job.id, state=JobState.SUCCEEDED)
    assert updated.done and store.get(job.id).state is JobState.SUCCEEDED
    assert heard == [1]


def test_events_follow_changes_at_most_four_a_second(
    hvd: Hypervisord, qsd: QemuStorageDaemon, tmp_path: Path
) -> None:
    qsd.write(0, random.Random(5).randbytes(6 * MiB))
    qsd.flush()
    http = hvd.client()
    slow = {"compression": "zstd", "compression_level": 19, "parallel": 1}
    r = http.post("/exports", json={"vm_path": qsd.locator, "output": str(tmp_path / "r"), **slow})
    job_id = r.json()["id"]
    arrivals: list[tuple[float, str]] = []
    with http.stream("GET", f"/exports/{job_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                arrivals.append((time.monotonic(), line.removeprefix("event: ")))
    names = [name for _, name in arrivals]
    assert names[-1] == "end" and set(names[:-1]) == {"job"} and len(names) >= 3
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(arrivals)]
    assert min(gaps) > 0.2, gaps  # EVENT_INTERVAL: changes between events are merged
