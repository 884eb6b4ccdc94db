"""Jobs and their store: one SQLite table in the daemon's state folder (``daemon/jobs.db``).

A ``Job`` is the record docs/api.md shows; its ``state`` is one of ``JobState``, the only
vocabulary of states (the store, the runner, the routes and the OpenAPI enum use it).
The store keeps each job as its JSON document plus a few columns to filter on. Every
change to a job calls the watchers of that job (the SSE streams): they are told, they
do not poll. On start, jobs left ``queued`` or ``running`` by an earlier daemon become
``failed`` with the message ``daemon restarted``: no worker of this process will ever
run them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from hypersdk.errors import NotFoundError, RepositoryError

log = logging.getLogger("hypervisord")


class JobKind(StrEnum):
    EXPORT = "export"
    RESTORE = "restore"
    VERIFY = "verify"
    GC = "gc"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


KINDS = tuple(JobKind)
STATES = tuple(JobState)
ACTIVE = frozenset({JobState.QUEUED, JobState.RUNNING})
FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
RESTARTED = {"code": "daemon_restarted", "message": "daemon restarted"}


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Job:
    id: str
    kind: JobKind
    vm_path: str | None
    output: str | None
    state: JobState = JobState.QUEUED
    phase: str = JobState.QUEUED.value  # finer than the state: "copying", "committing"...
    bytes_done: int = 0
    bytes_total: int | None = None
    throughput_bytes_per_s: float | None = None
    mode: str | None = None
    reason: str | None = None
    created: str = ""
    started: str | None = None
    finished: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None

    @classmethod
    def new(cls, kind: JobKind, vm_path: str | None, output: str | None) -> Job:
        return cls(f"j-{uuid.uuid4().hex[:12]}", kind, vm_path, output, created=now_iso())

    @property
    def done(self) -> bool:
        return self.state.finished

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Job:
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in doc.items() if k in names}
        return cls(**{**known, "kind": JobKind(doc["kind"]), "state": JobState(doc["state"])})


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL,
    vm_path TEXT,
    state TEXT NOT NULL,
    doc TEXT NOT NULL
)
"""


Watcher = Callable[[], None]


class JobStore:
    """Thread-safe; one connection guarded by a lock (the daemon's load is tiny)."""

    def __init__(self, state_dir: Path) -> None:
        folder = Path(state_dir) / "daemon"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(folder / "jobs.db", check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise RepositoryError(f"cannot open the job store in {folder}: {exc}") from exc
        self._lock = threading.Lock()
        self._watchers: dict[str, list[Watcher]] = {}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def recover(self) -> int:
        """Fail every job an earlier daemon left queued or running; returns how many."""
        with self._lock:
            active = tuple(ACTIVE)
            rows = self._db.execute(
                f"SELECT doc FROM jobs WHERE state IN ({', '.join('?' * len(active))})", active
            ).fetchall()
            for (raw,) in rows:
                job = dataclasses.replace(
                    Job.from_json(json.loads(raw)),
                    state=JobState.FAILED,
                    phase=JobState.FAILED.value,
                    finished=now_iso(),
                    error=dict(RESTARTED),
                )
                self._write(job)
            self._db.commit()
            return len(rows)

    def add(self, job: Job) -> Job:
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, kind, vm_path, state, doc) VALUES (?, ?, ?, ?, ?)",
                (job.id, job.kind, job.vm_path, job.state, json.dumps(job.to_json())),
            )
            self._db.commit()
        return job

    def update(self, job_id: str, **fields: Any) -> Job:
        """Change some fields of a job (an unknown field name is a TypeError) and tell the
        job's watchers."""
        with self._lock:
            job = dataclasses.replace(self._get(job_id), **fields)
            self._write(job)
            self._db.commit()
            watchers = list(self._watchers.get(job_id, ()))
        for notify in watchers:
            try:
                notify()
            except Exception:  # a watcher's failure never fails the job's update
                log.exception("job %s: a watcher failed", job_id)
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            return self._get(job_id)

    def find(
        self,
        *,
        state: JobState | None = None,
        kind: JobKind | None = None,
        vm_path: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        where, args = [], []
        for column, value in (("state", state), ("kind", kind), ("vm_path", vm_path)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(str(value))
        sql = "SELECT doc FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, [*args, limit]).fetchall()
        return [Job.from_json(json.loads(raw)) for (raw,) in rows]

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, state, COUNT(*) FROM jobs GROUP BY kind, state"
            ).fetchall()
        return {(k, s): n for k, s, n in rows}

    def finished_export_jobs(self) -> list[Job]:
        """Export jobs that succeeded or failed, oldest first (for per-VM /metrics)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT doc FROM jobs WHERE kind = ? AND state IN (?, ?) ORDER BY seq",
                (JobKind.EXPORT, JobState.SUCCEEDED, JobState.FAILED),
            ).fetchall()
        return [Job.from_json(json.loads(raw)) for (raw,) in rows]

    def finished_exports(self) -> list[dict[str, Any]]:
        """Results of succeeded exports (for /metrics)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT doc FROM jobs WHERE kind = ? AND state = ?",
                (JobKind.EXPORT, JobState.SUCCEEDED),
            ).fetchall()
        return [json.loads(raw).get("result") or {} for (raw,) in rows]

    def watch(self, job_id: str, notify: Watcher) -> Callable[[], None]:
        """Call ``notify`` (from the updating thread, so it must be quick and thread-safe)
        after every change of the job; returns the function that stops it."""
        with self._lock:
            self._watchers.setdefault(job_id, []).append(notify)

        def stop() -> None:
            with self._lock:
                left = self._watchers.get(job_id, [])
                if notify in left:
                    left.remove(notify)
                if not left:
                    self._watchers.pop(job_id, None)

        return stop

    # -- under the lock ------------------------------------------------------------

    def _get(self, job_id: str) -> Job:
        row = self._db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no job {job_id!r}")
        return Job.from_json(json.loads(row[0]))

    def _write(self, job: Job) -> None:
        self._db.execute(
            "UPDATE jobs SET state = ?, doc = ? WHERE id = ?",
            (job.state, json.dumps(job.to_json()), job.id),
        )
