"""The policy scheduler: runs each backup policy on its cron schedule.

Why croniter and a small loop rather than APScheduler: croniter is only the cron
arithmetic (next and previous times, a seconds field), and what a backup scheduler must
decide besides is ours to keep: the last scheduled time lives in the daemon's state
(policy_store), a run missed while the daemon was down runs once at start (several
missed ones coalesce into one), and a run still going when the next is due is *skipped
with a record in the history*. APScheduler would keep its own job store beside ours
(SQLAlchemy, for persistence) and reports an overlapping run only as a log line
(``max_instances``); its cron trigger does not take the 6-field form.

A run exports every VM of the policy as the daemon's normal export jobs (they show in
/exports, cancel works, the per-VM lock and ``max_concurrent_exports`` hold), at most
``max_concurrent`` at once and at most ``max_per_host`` / ``max_per_datastore`` per
placement key; then it prunes each VM by the policy's retention and collects garbage
once. Each VM's export is incremental unless the policy says otherwise: a CBT audit
every ``audit_every_days``, a full export every ``full_every_days``, and a full export
after an audit that found blocks CBT missed (engine/audit.py).
"""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypersdk.daemon.jobs import JobState, JobStore, now_iso
from hypersdk.daemon.policies import (
    Policy,
    PolicyVm,
    cron,
    parse_policies,
    parse_policy,
    read_policy_file,
)
from hypersdk.daemon.policy_store import (
    PolicyRun,
    PolicyState,
    PolicyStore,
    RunExport,
    RunState,
    Trigger,
    VmState,
)
from hypersdk.daemon.runner import ExportSpec, Runner
from hypersdk.daemon.state import Daemon
from hypersdk.engine.export import ExportRequest
from hypersdk.engine.prune import PruneReport, prune
from hypersdk.errors import ConflictError, HyperSDKError, NotFoundError, UsageError
from hypersdk.repository.gc import collect_garbage
from hypersdk.repository.repository import Repository
from hypersdk.state.history import History

if TYPE_CHECKING:  # pyVmomi is loaded only when a policy names a vSphere VM
    from hypersdk.providers.vsphere import InventoryVm

log = logging.getLogger("hypervisord")

TICK = 0.5  # seconds between looks at the schedules (the cron's finest unit is 1 s)
FIRST_BATCH_WAIT = 5.0  # how long POST /policies/{name}/run waits for the first jobs

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def next_time(policy: Policy, after: datetime) -> datetime:
    t: datetime = cron(policy.schedule, after).get_next(datetime)
    return t


def latest_time(policy: Policy, now: datetime) -> datetime:
    """The last cron time at or before ``now`` (croniter's get_prev is strictly before)."""
    prev: datetime = cron(policy.schedule, now).get_prev(datetime)
    following = next_time(policy, prev)
    return following if following <= now else prev


def choose_mode(policy: Policy, vm: VmState, now: datetime) -> tuple[str, str]:
    """("incremental" | "full" | "audit", why) for one VM's next export."""

    def due(last: str | None, days: float) -> bool:
        return last is None or now - parse_iso(last) >= timedelta(days=days)

    if policy.audit_every_days is not None and due(vm.last_audit, policy.audit_every_days):
        since = f"last audit {vm.last_audit}" if vm.last_audit else "never audited"
        return "audit", f"audit_every_days {policy.audit_every_days:g} ({since})"
    if vm.force_full is not None:
        return "full", vm.force_full
    if policy.full_every_days is not None and due(vm.last_full, policy.full_every_days):
        since = f"last full {vm.last_full}" if vm.last_full else "no full export by this policy"
        return "full", f"full_every_days {policy.full_every_days:g} ({since})"
    return "incremental", "scheduled incremental (full when CBT cannot tell)"


@dataclass
class _Active:
    index: int
    job_id: str
    unwatch: Callable[[], None]


class PolicyScheduler:
    def __init__(
        self,
        state_dir: Path,
        runner: Runner,
        jobs: JobStore,
        store: PolicyStore,
        policies: list[Policy],
        *,
        check_vm: Callable[[str], None] = lambda vm_path: None,
        inventory: Callable[[], list[InventoryVm]] | None = None,
        clock: Clock = utcnow,
        tick: float = TICK,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.runner = runner
        self.jobs = jobs
        self.store = store
        self.check_vm = check_vm  # ForbiddenPath unless the daemon may touch the VM's files
        self.inventory = inventory or _no_vsphere
        self.clock = clock
        self.tick = tick
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._policies = {p.name: p for p in policies}
        self._running: dict[str, PolicyRun] = {}
        self._threads: list[threading.Thread] = []
        self._last: dict[str, datetime] = {}
        self._stop = threading.Event()
        self._loop_thread: threading.Thread | None = None
        self._started = clock()

    # -- the policy set --------------------------------------------------------------

    def add_api_policy(self, policy: Policy) -> None:
        """Create or replace a policy made through the API (the store is written first)."""
        with self._lock:
            current = self._policies.get(policy.name)
            if current is not None and current.source != "api":
                raise ConflictError(
                    f"policy {policy.name} is defined in the daemon's policies file; "
                    "change it there"
                )
            self.store.put_policy(policy.name, policy.document())
            self._policies[policy.name] = policy

    def delete_api_policy(self, name: str) -> Policy:
        with self._lock:
            policy = self.get(name)
            if policy.source != "api":
                raise ConflictError(
                    f"policy {name} is defined in the daemon's policies file; remove it there"
                )
            if name in self._running:
                raise ConflictError(f"policy {name} is running ({self._running[name].id})")
            self.store.delete_policy(name)
            self.store.forget(name)
            del self._policies[name]
            self._last.pop(name, None)
            return policy

    def policies(self) -> list[Policy]:
        with self._lock:
            return sorted(self._policies.values(), key=lambda p: p.name)

    def get(self, name: str) -> Policy:
        policy = self._policies.get(name)
        if policy is None:
            raise NotFoundError(f"no policy {name!r}")
        return policy

    def status(self, policy: Policy) -> dict[str, Any]:
        """The policy with its next scheduled time and the run going, if any."""
        with self._lock:
            last = self._last.get(policy.name)
            running = self._running.get(policy.name)
        base = last if last is not None else self.clock()
        return {
            **policy.to_json(),
            **dict(next_run=iso(next_time(policy, base)), running=running and running.id),
        }

    def history(self, name: str, limit: int = 100) -> list[PolicyRun]:
        self.get(name)
        return self.store.runs(name, limit)

    # -- starting and stopping -------------------------------------------------------

    def start(self) -> None:
        self._loop_thread = threading.Thread(target=self._loop, name="policies", daemon=True)
        self._loop_thread.start()

    def stop(self) -> None:
        """Start no more runs or exports (the runner's shutdown ends the jobs going)."""
        self._stop.set()
        if self._loop_thread is not None:
            self._loop_thread.join()

    def join(self, timeout: float = 30.0) -> None:
        """Wait for the runs going to record their end (after the runner's shutdown)."""
        for thread in list(self._threads):
            thread.join(timeout)

    # -- the loop --------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            for policy in self.policies():
                try:
                    self._check(policy, self.clock())
                except Exception:  # one policy's trouble never stops the others
                    log.exception("policy %s: scheduling failed", policy.name)
            self._stop.wait(self.tick)

    def _check(self, policy: Policy, now: datetime) -> None:
        last = self._last.get(policy.name)
        if last is None:
            stored = self.store.state(policy.name).last_scheduled
            # A new policy catches up nothing from before it existed.
            last = parse_iso(stored) if stored else now
            if last > now:  # the clock went back: do not wait for the old future
                last, stored = now, None
            if not stored:
                self._update_state(policy.name, lambda s: setattr(s, "last_scheduled", iso(now)))
            self._last[policy.name] = last
        if next_time(policy, last) > now:
            return
        scheduled = latest_time(policy, now)  # several missed times make one run
        trigger = Trigger.CATCH_UP if scheduled < self._started else Trigger.SCHEDULE
        self._last[policy.name] = scheduled
        self._update_state(policy.name, lambda s: setattr(s, "last_scheduled", iso(scheduled)))
        try:
            self.start_run(policy.name, trigger, scheduled)
        except ConflictError as err:
            run = PolicyRun.new(policy.name, trigger, iso(scheduled))
            run.state, run.reason, run.finished = RunState.SKIPPED, str(err), now_iso()
            self.store.save_run(run)
            log.warning("policy %s: run at %s skipped: %s", policy.name, iso(scheduled), err)

    # -- runs ------------------------------------------------------------------------

    def start_run(
        self, name: str, trigger: Trigger = Trigger.MANUAL, scheduled: datetime | None = None
    ) -> PolicyRun:
        """Start a run (ConflictError while one is going); returns it once its first
        exports are submitted (or after FIRST_BATCH_WAIT)."""
        first_batch = threading.Event()
        with self._lock:
            policy = self.get(name)
            going = self._running.get(name)
            if going is not None:
                raise ConflictError(
                    f"policy {name} is still running (run {going.id}, started {going.started})"
                )
            if self._stop.is_set():
                raise ConflictError("the daemon is stopping")
            run = PolicyRun.new(name, trigger, iso(scheduled) if scheduled else None)
            self.store.save_run(run)
            self._running[name] = run
            thread = threading.Thread(
                target=self._execute, args=(policy, run, first_batch), name=f"policy-{name}"
            )
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
            thread.start()
        first_batch.wait(FIRST_BATCH_WAIT)
        return self.store.run(run.id)  # a copy: the run's thread goes on changing ``run``

    def _update_state(self, name: str, change: Callable[[PolicyState], object]) -> None:
        with self._state_lock:
            state = self.store.state(name)
            change(state)
            self.store.save_state(name, state)

    def _execute(self, policy: Policy, run: PolicyRun, first_batch: threading.Event) -> None:
        try:
            vms = self._exports(policy, run, first_batch)
            failed = [e for e in run.exports if e.state != JobState.SUCCEEDED]
            if self._stop.is_set() and failed:
                run.state, run.reason = RunState.FAILED, "the daemon stopped during the run"
            else:
                if not policy.retention.empty:
                    run.prune = self._prune(policy, vms)
                problems = []
                if failed:
                    problems.append(f"{len(failed)} of {len(run.exports)} exports failed")
                if run.prune is not None and run.prune.get("error"):
                    problems.append(f"prune: {run.prune['error']}")
                run.state = RunState.FAILED if problems else RunState.SUCCEEDED
                run.reason = "; ".join(problems) or None
        except Exception:
            log.exception("policy %s: run %s failed unexpectedly", policy.name, run.id)
            run.state, run.reason = RunState.FAILED, "internal error (see the daemon log)"
        finally:
            run.finished = now_iso()
            self.store.save_run(run)
            with self._lock:
                self._running.pop(policy.name, None)
            first_batch.set()
            log.info("policy %s: run %s %s", policy.name, run.id, run.state)

    def _expand(self, policy: Policy, run: PolicyRun) -> list[PolicyVm]:
        """The policy's VMs for this run: vSphere globs matched against the server's VMs
        now, and each vSphere VM's host and datastore looked up unless the policy gives
        them (per-VM keys when the server cannot tell). A glob that matches nothing is a
        failed export of the run, with the reason."""
        if all(v.host is not None and v.datastore is not None for v in policy.vms):
            return list(policy.vms)
        inventory: dict[str, InventoryVm] = {}
        trouble = None
        try:
            inventory = {v.path: v for v in self.inventory()}
        except HyperSDKError as err:
            trouble = str(err).splitlines()[0]
        out: dict[str, PolicyVm] = {}
        for vm in policy.vms:
            if vm.pattern:
                hits = [p for p in inventory if fnmatch.fnmatchcase(p, vm.locator)]
                if not hits:
                    why = trouble or f"no VM of the vSphere server matches {vm.locator}"
                    run.exports.append(
                        RunExport(
                            vm.vm_path,
                            "incremental",
                            "glob",
                            state=JobState.FAILED.value,
                            error=why,
                        )
                    )
                for path in hits:
                    out.setdefault(path, replace(vm, vm_path=path, locator=path, pattern=False))
            else:
                out.setdefault(vm.locator, vm)
        placed = []
        for vm in out.values():
            where = inventory.get(vm.locator)
            host = vm.host or (where and where.host) or f"vm:{vm.locator}"
            datastore = vm.datastore or (where and where.datastore) or f"vm:{vm.locator}"
            placed.append(replace(vm, host=host, datastore=datastore))
        return placed

    def _exports(
        self, policy: Policy, run: PolicyRun, first_batch: threading.Event
    ) -> list[PolicyVm]:
        """Export the run's VMs within the policy's limits; returns them."""
        vms = self._expand(policy, run)
        failed_early = len(run.exports)  # globs that matched nothing
        state = self.store.state(policy.name)
        now = self.clock()
        for vm in vms:
            mode, why = choose_mode(policy, state.vms.get(vm.locator, VmState()), now)
            run.exports.append(RunExport(vm.vm_path, mode, why))
        self.store.save_run(run)
        changed = threading.Event()
        pending = list(range(len(vms)))
        active: dict[int, _Active] = {}
        try:
            while pending or active:
                if not self._stop.is_set():
                    self._submit(policy, vms, run, pending, active, changed)
                else:
                    for i in pending:
                        run.exports[failed_early + i].state = JobState.FAILED.value
                        run.exports[failed_early + i].error = "daemon stopping"
                    pending.clear()
                self.store.save_run(run)
                first_batch.set()
                if not active:
                    continue
                changed.wait(self.tick)
                changed.clear()
                for i, a in list(active.items()):
                    job = self.jobs.get(a.job_id)
                    if job.done:
                        a.unwatch()
                        del active[i]
                        export = run.exports[failed_early + i]
                        self._finished(policy, export, vms[i], job.to_json())
        finally:
            for a in active.values():
                a.unwatch()
        return vms

    def _submit(
        self,
        policy: Policy,
        vms: list[PolicyVm],
        run: PolicyRun,
        pending: list[int],
        active: dict[int, _Active],
        changed: threading.Event,
    ) -> None:
        """Submit the pending exports the policy's limits allow now, in order."""
        offset = len(run.exports) - len(vms)  # globs that matched nothing come first
        hosts = Counter(vms[i].host for i in active)
        stores = Counter(vms[i].datastore for i in active)
        for i in list(pending):
            if len(active) >= policy.max_concurrent:
                return
            vm, export = vms[i], run.exports[offset + i]
            if policy.max_per_host is not None and hosts[vm.host] >= policy.max_per_host:
                continue
            if (
                policy.max_per_datastore is not None
                and stores[vm.datastore] >= policy.max_per_datastore
            ):
                continue
            pending.remove(i)
            try:
                self.check_vm(vm.vm_path)
                request = ExportRequest(
                    output=policy.output,
                    incremental=export.mode == "incremental",
                    force_full=export.mode != "incremental",
                    audit=export.mode == "audit",
                )
                job = self.runner.submit_export(ExportSpec(vm.vm_path, request))
            except HyperSDKError as err:
                export.state, export.error = JobState.FAILED.value, str(err).splitlines()[0]
                continue
            export.job_id, export.state = job.id, str(job.state)
            active[i] = _Active(i, job.id, self.jobs.watch(job.id, changed.set))
            hosts[vm.host] += 1
            stores[vm.datastore] += 1

    def _finished(
        self, policy: Policy, export: RunExport, vm: PolicyVm, job: dict[str, Any]
    ) -> None:
        export.state = job["state"]
        if job["state"] != JobState.SUCCEEDED:
            export.error = (job.get("error") or {}).get("message") or job["state"]
            return
        result = job.get("result") or {}
        export.generation = result.get("generation")
        export.result_mode = result.get("mode")
        audit = result.get("audit")
        when = iso(self.clock())  # the scheduler's clock, as choose_mode reads it

        def record(state: PolicyState) -> None:
            vs = state.vm(vm.locator)
            if export.result_mode == "full":
                vs.last_full, vs.force_full = when, None
            if export.mode == "audit":
                vs.last_audit = when
            if isinstance(audit, dict) and audit.get("performed"):
                missed = int(audit.get("blocks_missed") or 0)
                export.blocks_missed = missed
                if missed:
                    vs.force_full = (
                        f"the CBT audit of {when} found {missed} blocks CBT missed since "
                        f"generation {audit.get('previous')}"
                    )

        self._update_state(policy.name, record)

    def _prune(self, policy: Policy, vms: list[PolicyVm]) -> dict[str, Any]:
        """Prune each VM of the policy, then gc once; the combined report."""
        total = PruneReport(policy.retention, dry_run=False)
        try:
            repo = Repository.open(policy.output, password=self.runner.config.repository_password)
        except HyperSDKError as err:
            return {**total.to_json(), "error": str(err).splitlines()[0]}
        history = History(self.state_dir)
        for vm in vms:
            try:
                report = prune(repo, policy.retention, vm.vm_path, history=history, run_gc=False)
            except NotFoundError:
                continue  # no generation of this VM yet
            except HyperSDKError as err:
                total.skipped[vm.locator] = str(err).splitlines()[0]
                continue
            total.items.extend(report.items)
            total.skipped.update(report.skipped)
            total.done |= report.done
        doc: dict[str, Any] = {}
        if total.removed:
            try:
                total.gc = collect_garbage(repo)
            except HyperSDKError as err:  # e.g. another export holds the repository
                doc["gc_error"] = str(err).splitlines()[0]
        return {**total.to_json(), **doc}


def _no_vsphere() -> list[InventoryVm]:
    raise UsageError("the daemon has no vSphere server configured ([vsphere] in its config)")


def create_scheduler(d: Daemon, store: PolicyStore, clock: Clock = utcnow) -> PolicyScheduler:
    """The daemon's scheduler with its policies: the policies file's, the config file's
    ``[[policies]]`` (a mistake in either stops the daemon with a one-line error), then
    those made through the API (a stored one that no longer passes, e.g. its folder is
    no longer allowed, is logged and left out)."""
    config = d.config
    docs: list[Any] = list(config.policies)
    if config.policies_file:
        docs += read_policy_file(config.policies_file)
    policies = parse_policies(docs, d.output)
    names = {p.name for p in policies}
    for name, doc in store.api_policies():
        if name in names:
            log.error("policy %s: made through the API and in the policies file; the file's "
                      "is used", name)  # fmt: skip
            continue
        try:
            policies.append(parse_policy(doc, d.output, name=name, source="api"))
        except HyperSDKError as err:
            log.error("stored policy %s left out: %s", name, err)
    settings = config.vsphere

    def inventory() -> list[InventoryVm]:
        if settings is None:
            return _no_vsphere()
        from hypersdk.providers.vsphere import list_vms  # pyVmomi only when needed

        return list_vms(settings)

    return PolicyScheduler(
        config.state_dir,
        d.runner,
        d.store,
        store,
        policies,
        check_vm=d.check_vm,
        clock=clock,
        inventory=inventory,
    )
