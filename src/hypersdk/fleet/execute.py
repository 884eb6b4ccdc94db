"""One delivery of a job to a worker: run it at most once at a time, at least once overall.

1. A job whose status is already final does nothing (a late re-delivery).
2. The job's lease (hypersdk.fleet.lease) is taken, or the delivery ends: another worker
   runs it (Redis re-delivered a task that ran longer than the visibility timeout).
3. A keeper thread renews the lease and the limit slots, and watches the cancel flag;
   losing the lease (this worker stalled longer than the lease) cancels the run: the
   new holder owns the job, and a cancelled export commits nothing.
4. An export waits for its datastore and host slots once the VM is open, before anything
   is made on the hypervisor; only then is it ``running`` with its ``started`` time. Its
   final status is written before the slots are given back, so the jobs' started and
   finished times show the limits.
5. A retry after a dead worker needs nothing special: opening the provider removes what
   the dead run left (QEMU exports, jobs and fleecing nodes whose maker pid is gone;
   vSphere snapshots of this tool), the repository's per-VM lock is a flock that died
   with the worker, and its half-written generation has no manifest, so it does not
   exist (commit-last); an export only ever commits a new generation.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from hypersdk.daemon.config import DaemonConfig
from hypersdk.daemon.fleet import (
    DEFAULT_LEASE_SECONDS,
    FleetLimits,
    cancel_key,
    read_status,
    spec_from_json,
)
from hypersdk.daemon.jobs import JobState, now_iso
from hypersdk.daemon.runner import JobContext, JobWork
from hypersdk.errors import ExportCancelled, HyperSDKError
from hypersdk.fleet.lease import Lease
from hypersdk.fleet.limits import Semaphores, placement
from hypersdk.providers.base import Provider

log = logging.getLogger("hyperworker")

FINAL = {s.value for s in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)}


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _Keeper(threading.Thread):
    """Renews the lease and the slots every third of the lease; sets ``cancel`` when the
    job's cancel flag is set or the lease is lost."""

    def __init__(self, client: Any, lease: Lease, slots: Semaphores, seconds: float) -> None:
        super().__init__(name=f"lease-{lease.job_id}", daemon=True)
        self.client, self.lease, self.slots = client, lease, slots
        self.interval = min(1.0, seconds / 3)
        self.cancel = threading.Event()
        self.lost = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                if not self.lease.renew():
                    log.warning("job %s: lease lost; stopping this run", self.lease.job_id)
                    self.lost = True
                    self.cancel.set()
                    return
                self.slots.renew()
                self.lease.update(self.lease.job_id, worker=worker_name())
                if self.client.exists(cancel_key(self.lease.job_id)):
                    self.cancel.set()
            except Exception:  # Redis away for a moment: the lease outlives a few tries
                log.exception("job %s: renewing the lease failed", self.lease.job_id)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


class _FleetWork(JobWork):
    """The daemon's job work, waiting for the fleet's slots before an export starts."""

    def __init__(
        self, config: DaemonConfig, limits: FleetLimits, slots: Semaphores, lease: Lease
    ) -> None:
        super().__init__(config)
        self.limits, self.slots, self.lease = limits, slots, lease

    def admit(self, ctx: JobContext, provider: Provider) -> None:
        wanted = placement(provider).slots(self.limits)
        if wanted and not self.slots.try_take(wanted):
            names = ", ".join(f"{s.kind} {s.name}" for s in wanted)
            ctx.update(state=JobState.QUEUED, phase=f"waiting for a slot: {names}")
            if not self.slots.take(wanted, ctx.cancel):
                raise ExportCancelled("export cancelled while it waited; nothing was committed")
        ctx.update(state=JobState.RUNNING, phase="starting", started=now_iso())


def run_job(
    config: DaemonConfig,
    client: Any,
    job_id: str,
    spec_doc: Mapping[str, Any],
    rules: Mapping[str, Any],
) -> str:
    """Run one delivery of a job; returns what happened (for the worker's log).
    ``rules``: the daemon's fleet limits and lease time (daemon/fleet.py)."""
    limits = FleetLimits(int(rules.get("datastore", 0)), int(rules.get("host", 0)))
    lease_seconds = float(rules.get("lease_seconds", DEFAULT_LEASE_SECONDS))
    if read_status(client, job_id).get("state") in FINAL:
        return "already finished"
    token = f"{worker_name()}:{uuid.uuid4().hex[:8]}"
    lease = Lease(client, job_id, token, lease_seconds)
    if not lease.acquire():
        return "running on another worker"
    slots = Semaphores(client, token, lease_seconds)
    keeper = _Keeper(client, lease, slots, lease_seconds)
    try:
        if read_status(client, job_id).get("state") in FINAL:
            return "already finished"  # it ended between the first look and the lease
        if client.exists(cancel_key(job_id)):
            lease.update(job_id, **_final(JobState.CANCELLED))
            return "cancelled before it started"
        spec = spec_from_json(spec_doc)
        kind = spec_doc["kind"]
        fields: dict[str, Any] = {"worker": worker_name(), "phase": "starting"}
        if kind != "export":  # an export is running once it has its slots
            fields.update(state=JobState.RUNNING, started=now_iso())
        lease.update(job_id, **fields, error=None, result=None)
        keeper.start()
        work = _FleetWork(config, limits, slots, lease)
        ctx = JobContext(lease, job_id, keeper.cancel)
        try:
            result = work.run(ctx, spec)
        except ExportCancelled as exc:
            if keeper.lost:
                return "lost the lease; the new holder runs it"
            log.info("job %s cancelled: %s", job_id, exc)
            lease.update(job_id, **_final(JobState.CANCELLED))
            return "cancelled"
        except HyperSDKError as exc:
            log.info("job %s failed: %s", job_id, exc)
            error = {"code": exc.code, "message": str(exc)}
            lease.update(job_id, **_final(JobState.FAILED), error=error)
            return "failed"
        except Exception:
            log.exception("job %s failed unexpectedly", job_id)
            error = {"code": "internal_error", "message": "internal error (see worker log)"}
            lease.update(job_id, **_final(JobState.FAILED), error=error)
            return "failed"
        lease.update(job_id, **_final(JobState.SUCCEEDED), result=result)
        return "succeeded"
    finally:
        if keeper.is_alive():
            keeper.stop()
        slots.release()
        lease.release()


def _final(state: JobState) -> dict[str, Any]:
    phase = "done" if state is JobState.SUCCEEDED else state.value
    return {"state": state, "phase": phase, "finished": now_iso()}
