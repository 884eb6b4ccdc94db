"""Worker threads that run jobs: exports, restores, verifications and gc.

At most ``max_concurrent_exports`` jobs run at once; the rest wait ``queued``. Only one
export per VM may be queued or running (a second one is a ConflictError); the VM is
known by ``export_key``, so two spellings of one locator are one VM.
Every job has a cancel Event that the engine checks between blocks; a cancelled export
raises ExportCancelled inside the engine, which tears the backup session down and
commits nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from hypersdk.access.image import restore_image
from hypersdk.daemon.config import DaemonConfig
from hypersdk.daemon.jobs import RESTARTED, Job, JobKind, JobState, JobStore, now_iso
from hypersdk.engine import catalog
from hypersdk.engine.export import ExportHooks, ExportRequest, run_export
from hypersdk.engine.restore_into import prepare_into, run_into
from hypersdk.errors import ConflictError, ExportCancelled, HyperSDKError, UsageError
from hypersdk.providers.base import Provider
from hypersdk.providers.factory import check_exists, export_key, open_provider
from hypersdk.repository.gc import collect_garbage
from hypersdk.repository.keys import Password
from hypersdk.repository.repository import Repository
from hypersdk.repository.verify import select_with_damage, verify
from hypersdk.state.history import History

log = logging.getLogger("hypervisord")

PROGRESS_INTERVAL = 0.25  # seconds between stored progress updates
CANCEL_WAIT = 30.0  # how long DELETE waits for a running job to stop


@dataclass(frozen=True)
class ExportSpec:
    """One export job: the VM and its checked request."""

    vm_path: str
    request: ExportRequest

    @property
    def output(self) -> str:
        return self.request.output


@dataclass(frozen=True)
class RestoreSpec:
    output: str
    vm: str
    generation: str
    disk: str
    to: str
    format: str | None  # None: raw for a new file, detected for an existing disk
    force: bool
    capacity: int
    since: str | None = None  # restore into an existing disk that holds this generation
    compare: bool = False  # ... or whatever it holds, found by reading it

    @property
    def into(self) -> bool:
        return self.since is not None or self.compare


@dataclass(frozen=True)
class VerifySpec:
    output: str
    vm: str | None
    generation: str | None


@dataclass(frozen=True)
class GcSpec:
    output: str
    dry_run: bool = False


JobSpec = ExportSpec | RestoreSpec | VerifySpec | GcSpec


class JobSink(Protocol):
    """Where a running job's fields go: the daemon's JobStore, or a fleet worker's
    status record in Redis (hypersdk.daemon.fleet), which the daemon follows."""

    def update(self, job_id: str, **fields: Any) -> Any: ...


class JobContext:
    """What a running job uses to report progress and to see a cancel request."""

    def __init__(self, store: JobSink, job_id: str, cancel: threading.Event) -> None:
        self.store = store
        self.job_id = job_id
        self.cancel = cancel
        self.done = 0
        self.total: int | None = None
        self._started = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    def update(self, **fields: Any) -> None:
        self.store.update(self.job_id, **fields)

    def plan(self, mode: str | None, reason: str | None, total: int) -> None:
        with self._lock:
            self.total, self.done, self._started = total, 0, time.monotonic()
        fields: dict[str, Any] = {"phase": "copying", "bytes_total": total, "bytes_done": 0}
        if mode is not None:
            fields.update(mode=mode, reason=reason)
        self.update(**fields)

    def advance(self, n: int) -> None:
        """Progress callback: called from the engine's threads, stored ~4 times a second."""
        with self._lock:
            self.done += n
            now = time.monotonic()
            complete = self.total is not None and self.done >= self.total
            if now - self._last < PROGRESS_INTERVAL and not complete:
                return
            self._last = now
            done, elapsed = self.done, now - self._started
        fields: dict[str, Any] = {
            "bytes_done": done,
            "throughput_bytes_per_s": round(done / elapsed, 1) if elapsed > 0 else None,
        }
        if complete:
            fields["phase"] = "committing"
        self.update(**fields)


class Runner:
    def __init__(self, config: DaemonConfig, store: JobStore) -> None:
        self.config = config
        self.store = store
        self._pool = ThreadPoolExecutor(config.max_concurrent_exports, thread_name_prefix="job")
        self._lock = threading.Lock()
        self._cancel: dict[str, threading.Event] = {}
        self._done: dict[str, threading.Event] = {}
        self._exporting: dict[str, str] = {}  # export_key(vm_path) -> job id
        self._stopping = False
        self.work = JobWork(config)

    # -- submitting ------------------------------------------------------------------

    def submit_export(self, spec: ExportSpec) -> Job:
        check_exists(spec.vm_path)  # a missing image or socket: 404 now, not a failed job
        key = export_key(spec.vm_path)  # two spellings of one VM are one VM
        with self._lock:
            other = self._exporting.get(key)
            if other is not None:
                raise ConflictError(f"an export of {spec.vm_path} is already running ({other})")
            job = self.store.add(Job.new(JobKind.EXPORT, spec.vm_path, spec.output))
            self._exporting[key] = job.id
            self._start(job.id, lambda ctx: self._run_export(ctx, spec), spec)
        return job

    def submit_restore(self, spec: RestoreSpec) -> Job:
        with self._lock:
            job = self.store.add(Job.new(JobKind.RESTORE, spec.vm, spec.output))
            self._start(job.id, lambda ctx: self._run_restore(ctx, spec), spec)
        return job

    def submit_verify(self, spec: VerifySpec) -> Job:
        with self._lock:
            job = self.store.add(Job.new(JobKind.VERIFY, spec.vm, spec.output))
            self._start(job.id, lambda ctx: self._run_verify(ctx, spec), spec)
        return job

    def submit_gc(self, spec: GcSpec) -> Job:
        with self._lock:
            job = self.store.add(Job.new(JobKind.GC, None, spec.output))
            self._start(job.id, lambda ctx: self.work.gc(ctx, spec), spec)
        return job

    def _start(
        self, job_id: str, work: Callable[[JobContext], dict[str, Any]], spec: JobSpec
    ) -> None:
        """Run ``work`` in this process (a fleet's runner sends ``spec`` to a worker)."""
        self._cancel[job_id] = threading.Event()
        self._done[job_id] = threading.Event()
        self._pool.submit(self._run, job_id, work)

    # -- cancelling ------------------------------------------------------------------

    def cancel(self, job_id: str) -> Job:
        with self._lock:
            job = self.store.get(job_id)
            if job.done:
                raise ConflictError(f"job {job_id} already finished ({job.state})")
            cancel, done = self._cancel.get(job_id), self._done.get(job_id)
            if cancel is None or done is None:  # pragma: no cover - recovered at start
                raise ConflictError(f"job {job_id} is not run by this daemon")
            cancel.set()
            if job.state is JobState.QUEUED:
                return self._finish_cancelled(job_id, "cancelled before it started")
            self.store.update(job_id, phase="cancelling")
        done.wait(CANCEL_WAIT)
        return self.store.get(job_id)

    def shutdown(self) -> None:
        """Stop every job and wait for the workers: sessions are torn down cleanly, and
        the jobs end ``failed`` with ``daemon restarted``, as after a crash."""
        with self._lock:
            self._stopping = True
            for event in self._cancel.values():
                event.set()
        self._pool.shutdown(wait=True, cancel_futures=False)

    # -- running ---------------------------------------------------------------------

    def _finish_cancelled(self, job_id: str, why: str) -> Job:
        if self._stopping:
            return self._finish(job_id, JobState.FAILED, error=dict(RESTARTED))
        log.info("job %s cancelled: %s", job_id, why)
        return self._finish(job_id, JobState.CANCELLED)

    def _finish(self, job_id: str, state: JobState, **fields: Any) -> Job:
        phase = "done" if state is JobState.SUCCEEDED else state.value
        return self.store.update(job_id, state=state, phase=phase, finished=now_iso(), **fields)

    def _run(self, job_id: str, work: Callable[[JobContext], dict[str, Any]]) -> None:
        cancel, done = self._cancel[job_id], self._done[job_id]
        try:
            with self._lock:
                if cancel.is_set():
                    if self._stopping and self.store.get(job_id).state is JobState.QUEUED:
                        self._finish_cancelled(job_id, "daemon stopping")
                    return  # else cancelled while queued; already recorded
                self.store.update(
                    job_id, state=JobState.RUNNING, phase="starting", started=now_iso()
                )
            ctx = JobContext(self.store, job_id, cancel)
            try:
                result = work(ctx)
            except ExportCancelled as exc:
                self._finish_cancelled(job_id, str(exc))
            except HyperSDKError as exc:
                log.info("job %s failed: %s", job_id, exc)
                self._finish(job_id, JobState.FAILED, error={"code": exc.code, "message": str(exc)})
            except Exception:
                log.exception("job %s failed unexpectedly", job_id)
                self._finish(
                    job_id,
                    JobState.FAILED,
                    error={"code": "internal_error", "message": "internal error (see daemon log)"},
                )
            else:
                self._finish(job_id, JobState.SUCCEEDED, result=result)
        finally:
            with self._lock:
                for vm, running in list(self._exporting.items()):
                    if running == job_id:
                        del self._exporting[vm]
                self._cancel.pop(job_id, None)
                self._done.pop(job_id, None)
            done.set()

    def _run_export(self, ctx: JobContext, spec: ExportSpec) -> dict[str, Any]:
        return self.work.export(ctx, spec)

    def _run_restore(self, ctx: JobContext, spec: RestoreSpec) -> dict[str, Any]:
        return self.work.restore(ctx, spec)

    def _run_verify(self, ctx: JobContext, spec: VerifySpec) -> dict[str, Any]:
        return self.work.verify(ctx, spec)


class JobWork:
    """What a job does, wherever it runs: in the daemon's threads or in a fleet worker
    (hypersdk.fleet), which builds the same ``JobContext`` over its own sink."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config

    def admit(self, ctx: JobContext, provider: Provider) -> None:
        """Called once the VM is known, before anything is made on the hypervisor: a
        fleet worker waits here for its datastore and host slots (hypersdk.fleet)."""

    def run(self, ctx: JobContext, spec: JobSpec) -> dict[str, Any]:
        if isinstance(spec, ExportSpec):
            return self.export(ctx, spec)
        if isinstance(spec, RestoreSpec):
            return self.restore(ctx, spec)
        if isinstance(spec, GcSpec):
            return self.gc(ctx, spec)
        return self.verify(ctx, spec)

    def export(self, ctx: JobContext, spec: ExportSpec) -> dict[str, Any]:
        ctx.update(phase="connecting")
        provider = open_provider(spec.vm_path, self.config.vsphere)
        try:
            if ctx.cancel.is_set():
                raise ExportCancelled("export cancelled; nothing was committed")
            self.admit(ctx, provider)
            ctx.update(phase="deciding")
            hooks = ExportHooks(on_plan=ctx.plan, progress=ctx.advance, cancel=ctx.cancel)
            history = History(Path(self.config.state_dir))
            report = run_export(
                provider, spec.request, history, hooks, password=self.config.repository_password
            )
        finally:
            provider.close()
        ctx.update(bytes_done=report.bytes_read)
        return report.to_json()

    def restore(self, ctx: JobContext, spec: RestoreSpec) -> dict[str, Any]:
        password = self.config.repository_password
        if spec.into:
            job = prepare_into(
                spec.output,
                spec.vm,
                spec.generation,
                spec.disk,
                spec.to,
                since=spec.since,
                compare=spec.compare,
                fmt=spec.format,
                password=password,
            )
            ctx.plan(None, None, job.plan.progress_total)
            ctx.update(phase="comparing" if spec.compare else "restoring")
            return run_into(job, progress=ctx.advance, cancel=ctx.cancel).to_json()
        repo = Repository.open(spec.output, password=password)
        manifest = repo.generation(spec.vm, spec.generation)
        ctx.plan(None, None, spec.capacity)
        ctx.update(phase="restoring")
        result = restore_image(
            repo,
            manifest,
            spec.disk,
            spec.to,
            fmt=spec.format or "raw",
            force=spec.force,
            progress=ctx.advance,
            cancel=ctx.cancel,
        )
        return asdict(result)

    def verify(self, ctx: JobContext, spec: VerifySpec) -> dict[str, Any]:
        repo = Repository.open(spec.output, password=self.config.repository_password)
        # A damaged manifest in the selection is reported as damage, like hyperctl verify.
        manifests, damaged = select_with_damage(repo, spec.vm, spec.generation)
        ctx.update(phase="checking")
        report = verify(repo, manifests, cancel=ctx.cancel, damaged=damaged)
        ctx.update(bytes_done=report.bytes_checked)
        return {"ok": report.ok, **asdict(report)}

    def gc(self, ctx: JobContext, spec: GcSpec) -> dict[str, Any]:
        """``hyperctl gc`` as a job; its result is ``hyperctl gc --json``'s object."""
        repo = Repository.open(spec.output, password=self.config.repository_password)

        def progress(phase: str, done: int, total: int) -> None:
            ctx.update(phase="marking" if phase == "mark" else "sweeping")

        report = collect_garbage(repo, dry_run=spec.dry_run, progress=progress)
        ctx.update(bytes_done=report.bytes_removed)
        return {"dry_run": spec.dry_run, **asdict(report)}


# -- checks done before a job is accepted (so that mistakes answer 404/422 at once) --


def prepare_restore(
    output: str,
    vm: str,
    generation: str,
    disk: str | None,
    to: str,
    fmt: str | None,
    force: bool,
    *,
    since: str | None = None,
    compare: bool = False,
    password: Password | None = None,
) -> RestoreSpec:
    """``vm`` is any name of the VM (catalog.resolve_vm); the job gets its id (and F's)."""
    if since is not None or compare:
        job = prepare_into(
            output, vm, generation, disk, to, since=since, compare=compare, fmt=fmt,
            password=password,
        )  # fmt: skip
        p = job.plan
        return RestoreSpec(
            output,
            p.manifest.vm_id,
            p.manifest.id,
            p.disk,
            to,
            fmt,
            force,
            p.index.capacity,
            since=p.since.id if p.since is not None else None,
            compare=compare,
        )
    if not Path(to).is_absolute():
        raise UsageError(f"'to' must be an absolute path, not {to!r}")
    plan = catalog.prepare_restore(output, vm, generation, disk, to, force=force, password=password)
    return RestoreSpec(
        output, plan.vm_id, plan.manifest.id, plan.disk, str(plan.target), fmt, force, plan.capacity
    )


def prepare_verify(
    output: str, vm: str | None, generation: str | None, password: Password | None = None
) -> VerifySpec:
    if generation is not None and vm is None:
        raise UsageError("generation needs vm")
    repo = Repository.open(output, password=password)
    vm_id, _, _ = catalog.select_for_verify(repo, vm, generation)
    return VerifySpec(output, vm_id, generation)
