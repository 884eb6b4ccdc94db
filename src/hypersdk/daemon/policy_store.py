"""What the policy scheduler keeps across restarts, in ``<state>/daemon/policies.db``:

- ``runs``: each run of a policy (its history, newest first at the API);
- ``policy_state``: per policy, the last scheduled time it handled (so a run missed
  while the daemon was down is found at start) and, per VM, the times of its last full
  and last audited export and why its next export must be full;
- ``api_policies``: the policies created through the API (PUT /policies/{name}).

SQLite makes each write atomic; a record that does not parse is logged and left out,
never a 500 (one bad record never blocks the others).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import uuid
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from hypersdk.daemon.jobs import JobState, now_iso
from hypersdk.errors import NotFoundError, RepositoryError

log = logging.getLogger("hypervisord")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS runs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT UNIQUE NOT NULL,
        policy TEXT NOT NULL,
        doc TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS runs_policy ON runs (policy, seq)",
    "CREATE TABLE IF NOT EXISTS policy_state (policy TEXT PRIMARY KEY, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS api_policies (name TEXT PRIMARY KEY, doc TEXT NOT NULL)",
)


class PolicyRunState(StrEnum):
    """A run's state: the job states it shares keep their one spelling (JobState)."""

    RUNNING = JobState.RUNNING.value
    SUCCEEDED = JobState.SUCCEEDED.value
    FAILED = JobState.FAILED.value
    SKIPPED = "skipped"  # its time came while the previous run was still going


RunState = PolicyRunState


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    CATCH_UP = "catch-up"  # missed while the daemon was down; run once at start
    MANUAL = "manual"  # POST /policies/{name}/run


PENDING = "pending"  # an export of a run not submitted yet


@dataclass
class RunExport:
    """One VM's export in a run."""

    vm: str
    mode: str  # what the policy asked: "incremental", "full" or "audit"
    why: str
    job_id: str | None = None
    state: str = PENDING  # then the job's state
    generation: str | None = None
    result_mode: str | None = None  # what the export did ("full" / "incremental")
    blocks_missed: int | None = None  # the audit's count, when one was made
    error: str | None = None


@dataclass
class PolicyRun:
    id: str
    policy: str
    trigger: Trigger
    scheduled: str | None  # the cron time this run is for (None: run by hand)
    state: RunState = RunState.RUNNING
    reason: str | None = None
    started: str | None = None
    finished: str | None = None
    exports: list[RunExport] = field(default_factory=list)
    prune: dict[str, Any] | None = None

    @classmethod
    def new(cls, policy: str, trigger: Trigger, scheduled: str | None) -> PolicyRun:
        return cls(f"r-{uuid.uuid4().hex[:12]}", policy, trigger, scheduled, started=now_iso())

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["trigger"] = str(self.trigger)
        doc["state"] = str(self.state)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PolicyRun:
        exports = [RunExport(**e) for e in doc.get("exports", [])]
        return cls(
            **{
                **doc,
                "trigger": Trigger(doc["trigger"]),
                "state": RunState(doc["state"]),
                "exports": exports,
            }
        )


@dataclass
class VmState:
    last_full: str | None = None
    last_audit: str | None = None
    force_full: str | None = None  # why the next export must be full


@dataclass
class PolicyState:
    last_scheduled: str | None = None  # the last cron time handled (ran, skipped or caught up)
    vms: dict[str, VmState] = field(default_factory=dict)

    def vm(self, locator: str) -> VmState:
        return self.vms.setdefault(locator, VmState())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PolicyState:
        vms = {k: VmState(**v) for k, v in (doc.get("vms") or {}).items()}
        return cls(last_scheduled=doc.get("last_scheduled"), vms=vms)


RESTARTED = "daemon restarted during the run"
KEEP_RUNS = 1000  # runs kept per policy: a policy every minute must not grow the store forever


class PolicyStore:
    """Thread-safe; one connection guarded by a lock, like the job store."""

    def __init__(self, state_dir: Path) -> None:
        folder = Path(state_dir) / "daemon"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(folder / "policies.db", check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            for statement in _SCHEMA:
                self._db.execute(statement)
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise RepositoryError(f"cannot open the policy store in {folder}: {exc}") from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- runs ----------------------------------------------------------------------

    def recover(self) -> int:
        """Fail the runs an earlier daemon left running; returns how many."""
        with self._lock:
            rows = self._db.execute(
                "SELECT doc FROM runs WHERE json_extract(doc, '$.state') = ?",
                (RunState.RUNNING.value,),
            ).fetchall()
            count = 0
            for (raw,) in rows:
                run = self._parse(raw)
                if run is None:
                    continue
                run.state, run.reason, run.finished = RunState.FAILED, RESTARTED, now_iso()
                self._put_run(run)
                count += 1
            self._db.commit()
        return count

    def save_run(self, run: PolicyRun) -> None:
        with self._lock:
            self._put_run(run)
            self._db.execute(
                "DELETE FROM runs WHERE policy = ? AND seq <= (SELECT seq FROM runs "
                "WHERE policy = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (run.policy, run.policy, KEEP_RUNS),
            )
            self._db.commit()

    def runs(self, policy: str, limit: int = 100) -> list[PolicyRun]:
        with self._lock:
            rows = self._db.execute(
                "SELECT doc FROM runs WHERE policy = ? ORDER BY seq DESC LIMIT ?",
                (policy, limit),
            ).fetchall()
        return [r for r in (self._parse(raw) for (raw,) in rows) if r is not None]

    def run(self, run_id: str) -> PolicyRun:
        with self._lock:
            row = self._db.execute("SELECT doc FROM runs WHERE id = ?", (run_id,)).fetchone()
        run = self._parse(row[0]) if row is not None else None
        if run is None:
            raise NotFoundError(f"no policy run {run_id!r}")
        return run

    def forget(self, policy: str) -> None:
        """Drop a deleted policy's runs and state."""
        with self._lock:
            self._db.execute("DELETE FROM runs WHERE policy = ?", (policy,))
            self._db.execute("DELETE FROM policy_state WHERE policy = ?", (policy,))
            self._db.commit()

    # -- state ---------------------------------------------------------------------

    def state(self, policy: str) -> PolicyState:
        with self._lock:
            row = self._db.execute(
                "SELECT doc FROM policy_state WHERE policy = ?", (policy,)
            ).fetchone()
        if row is None:
            return PolicyState()
        try:
            return PolicyState.from_json(json.loads(row[0]))
        except (ValueError, TypeError, AttributeError):
            log.error("policy %s: its stored state does not parse; starting afresh", policy)
            return PolicyState()

    def save_state(self, policy: str, state: PolicyState) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO policy_state (policy, doc) VALUES (?, ?) "
                "ON CONFLICT (policy) DO UPDATE SET doc = excluded.doc",
                (policy, json.dumps(state.to_json())),
            )
            self._db.commit()

    # -- policies made through the API -----------------------------------------------

    def api_policies(self) -> list[tuple[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT name, doc FROM api_policies ORDER BY name").fetchall()
        out = []
        for name, raw in rows:
            try:
                out.append((name, json.loads(raw)))
            except ValueError:
                log.error("policy %s: its stored document does not parse; left out", name)
        return out

    def put_policy(self, name: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO api_policies (name, doc) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
                (name, json.dumps(doc)),
            )
            self._db.commit()

    def delete_policy(self, name: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM api_policies WHERE name = ?", (name,))
            self._db.commit()

    # -- under the lock ----------------------------------------------------------------

    def _put_run(self, run: PolicyRun) -> None:
        self._db.execute(
            "INSERT INTO runs (id, policy, doc) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
            (run.id, run.policy, json.dumps(run.to_json())),
        )

    @staticmethod
    def _parse(raw: str) -> PolicyRun | None:
        try:
            return PolicyRun.from_json(json.loads(raw))
        except (ValueError, TypeError, KeyError):
            log.error("a stored policy run does not parse; left out")
            return None
