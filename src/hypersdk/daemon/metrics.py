"""Prometheus text exposition (format 0.0.4), written by hand: it is tiny."""

from __future__ import annotations

from hypersdk.daemon.jobs import KINDS, STATES, JobState, JobStore

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
    return "\n".join(lines) + "\n"
