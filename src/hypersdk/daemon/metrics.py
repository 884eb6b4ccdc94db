"""Prometheus text exposition (format 0.0.4), written by hand: it is tiny."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from hypersdk.daemon.jobs import KINDS, STATES, Job, JobState, JobStore
from hypersdk.errors import HyperSDKError
from hypersdk.providers.factory import canonical_locator

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(store: JobStore) -> str:
    counts = store.counts()
    results = store.finished_exports()
    lines = [
        "# HELP hypersdk_jobs_total Jobs known to the daemon, by kind and state.",
        "# TYPE hypersdk_jobs_total gauge",
    ]
    for kind in KINDS:
        for state in STATES:
            n = counts.get((kind, state), 0)
            lines.append(f'hypersdk_jobs_total{{kind="{kind}",state="{state}"}} {n}')
    running = sum(n for (_, s), n in counts.items() if s == JobState.RUNNING)
    read = sum(int(r.get("bytes_read", 0)) for r in results)
    stored = sum(int(r.get("bytes_stored", 0)) for r in results)
    duration = sum(float(r.get("duration_s", 0.0)) for r in results)
    audits = [r["audit"] for r in results if isinstance(r.get("audit"), dict)]
    missed = sum(int(a.get("blocks_missed", 0)) for a in audits)
    audited = sum(1 for a in audits if a.get("performed"))
    lines += [
        "# HELP hypersdk_jobs_running Jobs running now.",
        "# TYPE hypersdk_jobs_running gauge",
        f"hypersdk_jobs_running {running}",
        "# HELP hypersdk_export_bytes_read_total Bytes read from disks by succeeded exports.",
        "# TYPE hypersdk_export_bytes_read_total counter",
        f"hypersdk_export_bytes_read_total {read}",
        "# HELP hypersdk_export_bytes_stored_total New bytes stored by succeeded exports.",
        "# TYPE hypersdk_export_bytes_stored_total counter",
        f"hypersdk_export_bytes_stored_total {stored}",
        "# HELP hypersdk_export_duration_seconds Duration of succeeded exports.",
        "# TYPE hypersdk_export_duration_seconds summary",
        f"hypersdk_export_duration_seconds_sum {duration:.3f}",
        f"hypersdk_export_duration_seconds_count {len(results)}",
        "# HELP hypersdk_cbt_audits_total CBT audits made by succeeded exports (--audit).",
        "# TYPE hypersdk_cbt_audits_total counter",
        f"hypersdk_cbt_audits_total {audited}",
        "# HELP hypersdk_cbt_missed_blocks_total Blocks that CBT audits found CBT had missed.",
        "# TYPE hypersdk_cbt_missed_blocks_total counter",
        f"hypersdk_cbt_missed_blocks_total {missed}",
    ]
    lines += _per_vm(store)
    return "\n".join(lines) + "\n"


@dataclass
class _VmState:
    last_success: Job | None = None
    failures: int = 0  # failed exports since the last success


def _per_vm(store: JobStore) -> list[str]:
    """Staleness gauges per VM, keyed by the canonical locator so that every spelling of
    one VM counts as that VM: when its last export succeeded, how long it took and what
    it moved, and how many exports failed since."""
    vms: dict[str, _VmState] = {}
    for job in store.finished_export_jobs():
        try:
            key = canonical_locator(job.vm_path or "")
        except HyperSDKError:
            continue
        state = vms.setdefault(key, _VmState())
        if job.state == JobState.SUCCEEDED:
            state.last_success, state.failures = job, 0
        else:
            state.failures += 1
    gauges = {
        "hypersdk_vm_last_success_timestamp_seconds": "Unix time the VM's last export "
        "succeeded (absent: never).",
        "hypersdk_vm_last_success_duration_seconds": "Duration of the VM's last successful export.",
        "hypersdk_vm_last_success_bytes_read": "Bytes the VM's last successful export read.",
        "hypersdk_vm_last_success_bytes_stored": "New bytes the VM's last successful export "
        "stored.",
        "hypersdk_vm_failures_since_success": "Exports of the VM that failed since its last "
        "success.",
    }
    out: list[str] = []
    for name, text in gauges.items():
        out += [f"# HELP {name} {text}", f"# TYPE {name} gauge"]
        for key in sorted(vms):
            value = _vm_value(name, vms[key])
            if value is not None:
                out.append(f'{name}{{vm="{_label(key)}"}} {value}')
    return out


def _vm_value(name: str, state: _VmState) -> str | None:
    if name == "hypersdk_vm_failures_since_success":
        return str(state.failures)
    job = state.last_success
    if job is None:
        return None
    result = job.result or {}
    if name == "hypersdk_vm_last_success_timestamp_seconds":
        when = datetime.fromisoformat((job.finished or job.created).replace("Z", "+00:00"))
        return f"{when.timestamp():.3f}"
    if name == "hypersdk_vm_last_success_duration_seconds":
        return f"{float(result.get('duration_s', 0.0)):.3f}"
    field = "bytes_read" if name.endswith("bytes_read") else "bytes_stored"
    return str(int(result.get(field, 0)))


def _label(value: str) -> str:
    """A Prometheus label value: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
