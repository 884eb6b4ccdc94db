"""CBT audit benchmark: an audit export against a forced full export, same disk, same run.

    .venv/bin/python bench/bench_audit.py [--size-mib 512] [--runs 3]

A qcow2 (half compressible data, 15% zero blocks) on a real qemu-storage-daemon gets a
baseline export; then 5% of its blocks change and we time, alternating, a forced full
export and a forced full export with ``--audit`` (which also asks QEMU's dirty bitmap
what changed and compares every block's index entry with the previous generation's),
each into the same repository, and compare the best runs. Target (issue 15): the audit
costs at most 1.1x the forced full export.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.rigs.qsd import QemuStorageDaemon

from hypersdk.engine.export import ExportReport, ExportRequest, run_export
from hypersdk.providers.base import Provider
from hypersdk.providers.factory import open_provider
from hypersdk.state.history import History
from imagegen import MIB, block_data, make_image, timed
from summary import record


def export(provider: Provider, history: History, repo: Path, **flags: bool) -> ExportReport:
    request = ExportRequest(output=str(repo.absolute()), parallel=4, **flags)
    return run_export(provider, request, history)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3, help="best of this many runs")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hypersdk-bench-audit-", dir=args.dir))
    size = args.size_mib * MIB
    try:
        raw, qcow2 = work / "disk.raw", work / "disk.qcow2"
        make_image(raw, size)
        subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2",
                        str(raw), str(qcow2)], check=True)  # fmt: skip
        raw.unlink()
        with QemuStorageDaemon(work / "qsd", size=size, image=qcow2) as qsd:
            provider = open_provider(qsd.locator)
            provider.enable_cbt()
            history, repo = History(work / "state"), work / "repo"
            export(provider, history, repo)
            rng = random.Random(5)
            for b in rng.sample(range(size // MIB), max(1, size // MIB // 20)):
                qsd.write(b * MIB, block_data(rng, MIB) or os.urandom(MIB))
            qsd.flush()
            fulls: list[float] = []
            audits: list[float] = []
            report: ExportReport | None = None
            for _ in range(args.runs):
                t, _ = timed(export, provider, history, repo, force_full=True)
                fulls.append(t)
                t, report = timed(export, provider, history, repo, audit=True)
                audits.append(t)
            provider.close()
        assert report is not None and report.audit is not None and report.audit.performed
        best_full, best_audit = min(fulls), min(audits)
        print(
            f"\n{args.size_mib} MiB qcow2 on qemu-storage-daemon, {os.cpu_count()} cores, "
            f"best of {args.runs}"
        )
        mib = args.size_mib
        print(f"  forced full export      {best_full:6.2f} s  ({mib / best_full:5.0f} MiB/s)")
        print(
            f"  full export with audit  {best_audit:6.2f} s  ({mib / best_audit:5.0f} MiB/s)"
            f"  {best_audit / best_full:.2f}x the forced full (target <= 1.1x)"
        )
        record("audit", "full export with --audit / forced full export", best_audit / best_full,
               at_most=1.1)  # fmt: skip
        print(
            "  all runs (s): full " + " ".join(f"{t:.2f}" for t in fulls)
            + ", audit " + " ".join(f"{t:.2f}" for t in audits)
        )  # fmt: skip
        print(
            f"  audit: {report.audit.blocks_checked} blocks checked, "
            f"{report.audit.blocks_missed} missed"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
