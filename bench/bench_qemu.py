"""QEMU benchmark: hyperexport's engine against `nbdcopy` on the same disk, same run.

    .venv/bin/python bench/bench_qemu.py [--size-mib 1024] [--parallel 4] [--runs 3]

A 1 GiB qcow2 (half compressible data, 15% zero blocks) is served by a real
qemu-storage-daemon. We time `nbdcopy` of the disk's NBD export to a file (synced) and a
full export (fleecing, dirty bitmaps, zstd, commit) into a fresh repository, ``--runs``
times each, alternating, and compare the best of each (the machine is shared: the best
run is the one least disturbed). Then, ``--runs`` times, a no-change incremental and an
incremental after 5% of the data was rewritten in scattered regions of 64 KiB to 1 MiB
(bench_peers.py's), through the daemon so that its dirty bitmap sees them. Each line also
gives the CPU seconds spent by this process (the engine) and by qemu-storage-daemon (the
server side, which nbdcopy pays too): on 2 cores a run cannot be faster than its CPU work
allows. Targets (issue 14): full >= 0.8x nbdcopy; a no-change incremental <= 0.3 s; an
incremental's cost per changed byte (its time beyond the no-change one's) <= 1.2x the
full export's time per byte read.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.rigs.qsd import QemuStorageDaemon

from bench_peers import scattered_regions
from hypersdk.engine.export import ExportReport
from hypersdk.providers.factory import open_provider
from hypersdk.state.history import History
from imagegen import MIB, exporter, make_image, timed
from summary import record


def nbdcopy(uri: str, out: Path) -> None:
    subprocess.run(["nbdcopy", uri, str(out)], check=True)
    os.sync()
    out.unlink()


def _ticks(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_and_children() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # nbdcopy, once it was waited for
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Run:
    seconds: float
    cpu_client: float  # this process (the engine) or nbdcopy
    cpu_server: float  # qemu-storage-daemon


def measured(server_pid: int, fn: Callable[[], object]) -> tuple[Run, object]:
    c0, s0 = _own_and_children(), _ticks(server_pid)
    seconds, result = timed(fn)
    return Run(seconds, _own_and_children() - c0, _ticks(server_pid) - s0), result


def line(label: str, mib: int, run: Run, extra: str = "") -> str:
    return (
        f"  {label:34s} {mib / run.seconds:6.0f} MiB/s {run.seconds:6.2f} s"
        f"  cpu {run.cpu_client:5.2f} + qsd {run.cpu_server:4.2f} s{extra}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--compress", default="zstd")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--runs", type=int, default=3, help="best of this many runs")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hypersdk-bench-qemu-", dir=args.dir))
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
            copies: list[Run] = []
            fulls: list[tuple[Run, ExportReport]] = []
            for i in range(args.runs):
                # a fresh repository and history each time: every run is a real full
                copy, _ = measured(qsd.pid, lambda: nbdcopy(qsd.nbd_uri, work / "copy.raw"))
                copies.append(copy)
                export = exporter(
                    provider, History(work / f"state{i}"), work / f"repo{i}", args.compress,
                    args.parallel,
                )  # fmt: skip
                run, report = measured(qsd.pid, functools.partial(export, False))
                assert isinstance(report, ExportReport)
                fulls.append((run, report))
            # Incrementals into the last repository: a no-change one, then 5% of the data
            # rewritten in scattered regions (as bench_peers.py), ``--runs`` times each.
            unchanged: list[float] = []
            changes: list[tuple[float, int, ExportReport]] = []
            for i in range(args.runs):
                t_none, none = timed(export, True)
                assert isinstance(none, ExportReport) and none.mode == "incremental"
                unchanged.append(t_none)
                regions = scattered_regions(size, 0.05, seed=7 + i)
                for r in regions:
                    qsd.write(r.offset, r.data)
                qsd.flush()
                t_inc, inc = timed(export, True)
                assert isinstance(inc, ExportReport) and inc.mode == "incremental"
                changes.append((t_inc, sum(len(r.data) for r in regions), inc))
            provider.close()
        report_lines(args, copies, fulls, unchanged, changes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report_lines(
    args: argparse.Namespace,
    copies: list[Run],
    fulls: list[tuple[Run, ExportReport]],
    unchanged: list[float],
    changes: list[tuple[float, int, ExportReport]],
) -> None:
    mib = args.size_mib
    best_copy = min(copies, key=lambda r: r.seconds)
    best_full, full = min(fulls, key=lambda f: f[0].seconds)
    t_full = best_full.seconds
    print(
        f"\n{mib} MiB qcow2 on qemu-storage-daemon, {args.parallel} threads, "
        f"{os.cpu_count()} cores, compression {args.compress}, best of {args.runs}"
    )
    print(line("nbdcopy to a file (reference)", mib, best_copy))
    print(line("full export", mib, best_full, f"  {best_copy.seconds / t_full:.2f}x nbdcopy"))
    print(
        "  all runs (s): nbdcopy "
        + " ".join(f"{r.seconds:.2f}" for r in copies)
        + ", full "
        + " ".join(f"{r.seconds:.2f}" for r, _ in fulls)
    )
    record("qemu", "full export speed / nbdcopy to a file", best_copy.seconds / t_full,
           at_least=0.8)  # fmt: skip
    # The cost of a changed byte: an incremental's time beyond a no-change incremental's
    # (snapshot, bitmaps, commit: the fixed cost), per byte the guest rewrote, against the
    # full export's time per byte it read. Blocks are read and stored whole, so a region
    # smaller than a block costs its whole block: "per block byte" shows that part.
    fixed = min(unchanged)
    full_per_byte = t_full / full.bytes_read
    per_changed = min((t - fixed) / changed for t, changed, _ in changes) / full_per_byte
    per_read = min((t - fixed) / r.bytes_read for t, _, r in changes) / full_per_byte
    t_inc, changed, inc = min(changes, key=lambda c: c[0])
    print(f"  no-change incremental                 {fixed:6.2f} s  (runs: "
          + " ".join(f"{t:.2f}" for t in unchanged) + ")")  # fmt: skip
    print(
        f"  incremental, {changed / MIB:.0f} MiB (5%) rewritten in scattered regions: "
        f"{t_inc:.2f} s, read {inc.bytes_read / MIB:.0f} MiB, stored "
        f"{inc.bytes_stored / MIB:.0f} MiB"
    )
    print(
        f"  cost per changed byte {per_changed:.2f}x the full's per byte "
        f"(per byte of the blocks read: {per_read:.2f}x)"
    )
    record("qemu", "no-change incremental", fixed, "s", at_most=0.3)
    record("qemu", "incremental cost per changed byte / full's per byte", per_changed,
           at_most=1.2)  # fmt: skip
    record("qemu", "incremental cost per byte of blocks read / full's", per_read)
    print(
        f"  modes: {full.mode}, {inc.mode}; full read {full.bytes_read / MIB:.0f} MiB, "
        f"stored {full.bytes_stored / MIB:.0f} MiB"
    )


if __name__ == "__main__":
    main()
