"""The job store: one SQLite table in the daemon's state folder (``daemon/jobs.db``).

A job is kept as its JSON document (the object docs/api.md shows) plus a few columns
to filter on. Every change bumps a version number so that watchers (SSE) can tell.
On start, jobs left ``queued`` or ``running`` by an earlier daemon become ``failed``
with the message ``daemon restarted``: no worker of this process will ever run them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypersdk.errors import NotFoundError, RepositoryError

KINDS = ("export", "restore", "verify")
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")

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


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_job(kind: str, vm_path: str | None, output: str | None) -> dict[str, Any]:
    return {
        "id": f"j-{uuid.uuid4().hex[:12]}",
        "kind": kind,
        "vm_path": vm_path,
        "output": output,
        "state": "queued",
        "phase": "queued",
        "bytes_done": 0,
        "bytes_total": None,
        "throughput_bytes_per_s": None,
        "mode": None,
        "reason": None,
        "created": now_iso(),
        "started": None,
        "finished": None,
        "result": None,
        "error": None,
    }


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
        self._changed = threading.Condition(self._lock)
        self.version = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def recover(self) -> int:
        """Fail every job an earlier daemon left queued or running; returns how many."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, doc FROM jobs WHERE state IN ('queued', 'running')"
            ).fetchall()
            for job_id, raw in rows:
                doc = json.loads(raw)
                doc.update(
                    state="failed",
                    phase="failed",
                    finished=now_iso(),
                    error={"code": "daemon_restarted", "message": "daemon restarted"},
                )
                self._write(job_id, doc)
            self._db.commit()
            return len(rows)

    def add(self, doc: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, kind, vm_path, state, doc) VALUES (?, ?, ?, ?, ?)",
                (doc["id"], doc["kind"], doc["vm_path"], doc["state"], json.dumps(doc)),
            )
            self._db.commit()
            self._bump()
        return dict(doc)

    def update(self, job_id: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            doc = self._get(job_id)
            doc.update(fields)
            self._write(job_id, doc)
            self._db.commit()
            self._bump()
            return doc

    def get(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            return self._get(job_id)

    def find(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        vm_path: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        where, args = [], []
        for column, value in (("state", state), ("kind", kind), ("vm_path", vm_path)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT doc FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, [*args, limit]).fetchall()
        return [json.loads(raw) for (raw,) in rows]

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, state, COUNT(*) FROM jobs GROUP BY kind, state"
            ).fetchall()
        return {(k, s): n for k, s, n in rows}

    def finished_exports(self) -> list[dict[str, Any]]:
        """Results of succeeded exports (for /metrics)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT doc FROM jobs WHERE kind = 'export' AND state = 'succeeded'"
            ).fetchall()
        return [json.loads(raw).get("result") or {} for (raw,) in rows]

    def wait_change(self, version: int, timeout: float) -> int:
        """Block until the store's version differs from ``version`` (or timeout)."""
        with self._changed:
            self._changed.wait_for(lambda: self.version != version, timeout)
            return self.version

    # -- under the lock ------------------------------------------------------------

    def _get(self, job_id: str) -> dict[str, Any]:
        row = self._db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no job {job_id!r}")
        doc: dict[str, Any] = json.loads(row[0])
        return doc

    def _write(self, job_id: str, doc: dict[str, Any]) -> None:
        self._db.execute(
            "UPDATE jobs SET state = ?, doc = ? WHERE id = ?",
            (doc["state"], json.dumps(doc), job_id),
        )

    def _bump(self) -> None:
        self.version += 1
        self._changed.notify_all()
