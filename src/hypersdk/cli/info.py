"""The ``--incremental-info`` report, in the spec's layout (or JSON)."""

from __future__ import annotations

from typing import Any

from hypersdk.cli.output import print_json
from hypersdk.engine.analysis import Analysis, disk_json, last_export_json


def spec_size(n: float) -> str:
    """Sizes as the spec prints them: "50 GB", "45.2 GB" (binary units)."""
    for unit, scale in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n:.0f} B"


def analysis_json(a: Analysis) -> dict[str, Any]:
    return {
        "vm_path": a.vm.locator,
        "vm_id": a.vm.vm_id,
        "cbt_enabled": a.cbt.enabled,
        "can_incremental": a.decision.can_incremental,
        "reason": a.decision.reason,
        "disks": [disk_json(d) for d in a.cbt.disks],
        "last_export": last_export_json(a.last),
        "estimated_changed_bytes": a.changed_bytes,
        "estimate_exact": a.exact,
        "estimated_savings_bytes": a.savings_bytes,
        "estimated_duration": a.estimated_duration,
    }


def print_analysis(a: Analysis, *, as_json: bool) -> None:
    if as_json:
        print_json(analysis_json(a))
        return
    lines = ["=== Incremental Export Analysis ===", ""]
    lines.append(f"Changed Block Tracking (CBT): {'Enabled' if a.cbt.enabled else 'Disabled'}")
    if not a.cbt.enabled and a.cbt.reason:
        lines.append(f"  {a.cbt.reason}")
    lines += ["", f"Current Disks: {len(a.cbt.disks)}"]
    for d in a.cbt.disks:
        lines.append(f"  • {d.key} ({spec_size(d.capacity_bytes)}) - {d.backing_info}")
        lines.append(f"    ChangeID: {d.change_id or '(none)'}")
        if not d.cbt_supported:
            lines.append(f"    No CBT: {d.cbt_reason}")
    lines.append("")
    if a.last is None:
        lines.append("Last Export: none")
    else:
        lines += [
            "Last Export:",
            f"  Time: {a.last.export_time.replace('T', ' ').removesuffix('Z')}",
            f"  Size: {spec_size(a.last.total_size)}",
            f"  Disks: {len(a.last.disks)}",
        ]
    lines += ["", "Incremental Export Status:"]
    if a.decision.can_incremental:
        lines.append("  ✓ Incremental export is possible")
        if a.changed_bytes is not None:
            # The spec's label either way (scripts read it); --json tells if it is exact.
            lines.append(f"  Estimated changed data: {spec_size(a.changed_bytes)}")
            pct = 100 * a.savings_bytes / a.total_size if a.total_size else 0.0
            lines.append(f"  Potential savings: {spec_size(a.savings_bytes)} ({pct:.1f}%)")
        lines.append(f"  Estimated duration: {a.estimated_duration}")
    else:
        lines.append(f"  ✗ Full export required: {a.decision.reason}")
    print("\n".join(lines))
