"""Distributed mode, the daemon's side (docs/fleet.md): with ``broker`` set, jobs go to
``hyperworker`` processes (hypersdk.fleet) through a Celery queue on Redis, and the
daemon follows them into its job store, which stays the source of truth of the API.

The protocol between the two sides lives here, in one place:

- the task ``hypersdk.run_job(job_id, spec, rules)`` on the queue ``hypersdk``, whose
  Celery task id is the job id (so ``revoke(job_id)`` names it); ``rules`` are the
  daemon's fleet limits and lease time, the same for every worker;
- ``hypersdk:fleet:job:<id>``: a hash of the job's fields (JSON values) that the worker
  holding the job's lease writes and the daemon copies into its store;
- ``hypersdk:fleet:lease:<id>``: the token of the worker running the job, with an expiry
  that the worker renews; a job whose status says a worker has it but whose lease is
  gone lost its worker, and the daemon sends it again (at least once);
- ``hypersdk:fleet:cancel:<id>``: set by DELETE; the worker checks it while it runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from hypersdk.daemon.config import DaemonConfig
from hypersdk.daemon.jobs import ACTIVE, Job, JobState, JobStore, now_iso
from hypersdk.daemon.runner import (
    CANCEL_WAIT,
    ExportSpec,
    GcSpec,
    JobContext,
    JobSpec,
    RestoreSpec,
    Runner,
    VerifySpec,
)
from hypersdk.engine.request import ExportRequest
from hypersdk.errors import ConflictError, ConnectionFailed, UsageError
from hypersdk.providers.factory import export_key

log = logging.getLogger("hypervisord")

TASK = "hypersdk.run_job"
QUEUE = "hypersdk"
PREFIX = "hypersdk:fleet:"
STATUS_TTL = 7 * 24 * 3600  # seconds a finished job's status stays in Redis
FOLLOW_INTERVAL = 0.25  # seconds between two looks at the followed jobs
JOB_FIELDS = frozenset(f.name for f in dataclasses.fields(Job)) - {"id", "kind", "created"}

DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_VISIBILITY_TIMEOUT = 600.0
DEFAULT_DATASTORE_LIMIT = 2  # vSphere's rule of thumb: a few snapshots per datastore
DEFAULT_HOST_LIMIT = 4


def status_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def lease_key(job_id: str) -> str:
    return f"{PREFIX}lease:{job_id}"


def cancel_key(job_id: str) -> str:
    return f"{PREFIX}cancel:{job_id}"


@dataclass(frozen=True)
class FleetLimits:
    """Exports at once across the fleet per datastore and per ESXi host (0: no limit).
    Sent with each job, so every worker applies the daemon's limits."""

    datastore: int = DEFAULT_DATASTORE_LIMIT
    host: int = DEFAULT_HOST_LIMIT

    def __post_init__(self) -> None:
        for name in ("datastore", "host"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
                raise UsageError(f"fleet {name}_limit must be 0 (no limit) to 1000")


@dataclass(frozen=True)
class FleetSettings:
    broker: str
    limits: FleetLimits = FleetLimits()
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT

    def __post_init__(self) -> None:
        check_broker(self.broker)
        if not 1.0 <= self.lease_seconds <= 3600:
            raise UsageError("fleet lease_seconds must be 1 to 3600")
        if not 1.0 <= self.visibility_timeout <= 7 * 24 * 3600:
            raise UsageError("fleet visibility_timeout must be 1 s to 7 days")


def check_broker(url: str) -> str:
    """Only Redis brokers: the leases, the status and the limits live in Redis too."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise UsageError(f"broker must be a redis://HOST:PORT/DB (or rediss://) URL, not {url!r}")
    return url


def celery_app(settings: FleetSettings) -> Any:
    """The Celery application both sides use. acks_late + reject_on_worker_lost: a task
    is acknowledged only once it ran, so a worker's death leaves it to another one;
    prefetch 1: a worker holds no more tasks than it runs."""
    from celery import Celery

    app = Celery("hypersdk", broker=settings.broker, set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # how often a worker looks for tasks unacknowledged for longer than that
            "unacked_restore_interval": max(1, min(10, int(settings.visibility_timeout / 2))),
            "unacked_restore_throttle": 1,
        },
    )
    return app


def redis_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)


# -- job specs as JSON (the task's argument) ---------------------------------------------


def spec_to_json(spec: JobSpec) -> dict[str, Any]:
    kinds = {ExportSpec: "export", RestoreSpec: "restore", VerifySpec: "verify", GcSpec: "gc"}
    kind = kinds[type(spec)]
    return {"kind": kind, **dataclasses.asdict(spec)}


def spec_from_json(doc: Mapping[str, Any]) -> JobSpec:
    fields = {k: v for k, v in doc.items() if k != "kind"}
    if doc["kind"] == "export":
        return ExportSpec(fields["vm_path"], ExportRequest(**fields["request"]))
    if doc["kind"] == "restore":
        return RestoreSpec(**fields)
    if doc["kind"] == "verify":
        return VerifySpec(**fields)
    if doc["kind"] == "gc":
        return GcSpec(**fields)
    raise UsageError(f"unknown job kind {doc['kind']!r}")


def read_status(client: Any, job_id: str) -> dict[str, Any]:
    raw = client.hgetall(status_key(job_id))
    return {k.decode(): json.loads(v) for k, v in raw.items()}


# -- the daemon's runner in a fleet ------------------------------------------------------


class FleetRunner(Runner):
    """Submits jobs to the queue instead of running them; a follower thread copies the
    workers' status into the job store and sends again a job whose worker died."""

    def __init__(self, config: DaemonConfig, store: JobStore, settings: FleetSettings) -> None:
        super().__init__(config, store)
        self.settings = settings
        self.redis = redis_client(settings.broker)
        try:
            self.redis.ping()
        except Exception as exc:
            raise ConnectionFailed(f"cannot reach the broker {settings.broker}: {exc}") from exc
        self.celery = celery_app(settings)
        self._specs: dict[str, dict[str, Any]] = {}  # followed job id -> its task's spec
        self._halt = threading.Event()
        self._follower = threading.Thread(target=self._follow, name="fleet", daemon=True)
        self._follower.start()

    def adopt(self) -> int:
        """Follow again the jobs an earlier daemon left queued or running: they live on
        in the workers. Returns how many."""
        found = [j for j in self.store.find(limit=10_000) if j.state in ACTIVE]
        with self._lock:
            for job in found:
                self._track(job.id, None)
                if job.vm_path is not None and job.kind == "export":
                    self._exporting.setdefault(export_key(job.vm_path), job.id)
        return len(found)

    def _start(
        self, job_id: str, work: Callable[[JobContext], dict[str, Any]], spec: JobSpec
    ) -> None:
        doc = spec_to_json(spec)
        self._track(job_id, doc)
        self._send(job_id, doc)

    def _track(self, job_id: str, doc: dict[str, Any] | None) -> None:
        self._cancel[job_id] = threading.Event()
        self._done[job_id] = threading.Event()
        if doc is not None:
            self._specs[job_id] = doc
            self.redis.hset(status_key(job_id), "spec", json.dumps(doc))
            self.redis.expire(status_key(job_id), STATUS_TTL)

    def _send(self, job_id: str, doc: dict[str, Any]) -> None:
        # The fleet's rules travel with each job, so every worker applies the daemon's.
        rules = {
            **dataclasses.asdict(self.settings.limits),
            "lease_seconds": self.settings.lease_seconds,
        }
        self.celery.send_task(TASK, args=[job_id, doc, rules], task_id=job_id, queue=QUEUE)

    def cancel(self, job_id: str) -> Job:
        with self._lock:
            job = self.store.get(job_id)
            if job.done:
                raise ConflictError(f"job {job_id} already finished ({job.state})")
            done = self._done.get(job_id)
            if done is None:  # pragma: no cover - every active job is followed
                raise ConflictError(f"job {job_id} is not followed by this daemon")
            # The flag first: a worker that takes the job from now on sees it.
            self.redis.set(cancel_key(job_id), "1", ex=STATUS_TTL)
            self.celery.control.revoke(job_id)
            if read_status(self.redis, job_id).get("worker") is None:
                self._forget(job_id)
                return self._finish_cancelled(job_id, "cancelled before a worker took it")
            self.store.update(job_id, phase="cancelling")
        done.wait(CANCEL_WAIT)
        return self.store.get(job_id)

    def shutdown(self) -> None:
        """Stop following; the workers go on, and a new daemon adopts their jobs."""
        self._stopping = True
        self._halt.set()
        self._follower.join(timeout=5)
        self._pool.shutdown(wait=True)
        self.celery.close()
        self.redis.close()

    # -- following -------------------------------------------------------------------

    def _forget(self, job_id: str) -> None:
        for vm, running in list(self._exporting.items()):
            if running == job_id:
                del self._exporting[vm]
        self._cancel.pop(job_id, None)
        self._specs.pop(job_id, None)
        done = self._done.pop(job_id, None)
        if done is not None:
            done.set()

    def _follow(self) -> None:
        while not self._halt.wait(FOLLOW_INTERVAL):
            try:
                self._follow_once()
            except Exception:  # Redis away for a moment: try again, keep the thread
                log.exception("fleet: following the jobs failed")

    def _follow_once(self) -> None:
        with self._lock:
            followed = list(self._done)
        for job_id in followed:
            # One snapshot of status and lease: a worker writes its final status before
            # it lets go of the lease, so "a worker has it, no lease" means it died.
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(status_key(job_id))
                pipe.exists(lease_key(job_id))
                raw, leased = pipe.execute()
            status = {k.decode(): json.loads(v) for k, v in raw.items()}
            with self._lock:
                if job_id not in self._done:
                    continue
                job = self.store.get(job_id)
                if job.done:
                    self._forget(job_id)
                    continue
                fields = {
                    k: JobState(v) if k == "state" else v
                    for k, v in status.items()
                    if k in JOB_FIELDS and getattr(job, k) != v
                }
                if fields:
                    job = self.store.update(job_id, **fields)
                if job.done:
                    self._forget(job_id)
                    continue
            if status.get("worker") is not None and not leased:
                self._resend(job_id, status)

    def _resend(self, job_id: str, status: Mapping[str, Any]) -> None:
        """The worker that held the job is gone (its lease expired without a final
        status): queue the job again. The next worker first removes what the dead run
        left on the hypervisor (the providers' stale cleanup) and commits only if the
        repository has no such generation yet (commit-last)."""
        doc = self._specs.get(job_id) or status.get("spec")
        if doc is None:  # pragma: no cover - the spec is written before the task
            return
        lost = status.get("worker")
        log.warning("fleet: job %s lost its worker %s; sending it again", job_id, lost)
        self.redis.hdel(status_key(job_id), "worker")
        self.redis.hset(
            status_key(job_id),
            mapping={
                "state": json.dumps(JobState.QUEUED.value),
                "phase": json.dumps(f"queued again: worker {lost} was lost"),
                "lost_at": json.dumps(now_iso()),
            },
        )
        self._send(job_id, doc)


def fleet_settings(config: DaemonConfig) -> FleetSettings | None:
    if config.broker is None:
        return None
    return FleetSettings(
        config.broker,
        FleetLimits(config.fleet_datastore_limit, config.fleet_host_limit),
        config.fleet_lease_seconds,
        config.fleet_visibility_timeout,
    )
