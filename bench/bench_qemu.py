"""QEMU benchmark: hyperexport's engine against `nbdcopy` on the same disk, same run.

    .venv/bin/python bench/bench_qemu.py [--size-mib 1024] [--parallel 4]

A 1 GiB qcow2 (half compressible data, 15% zero blocks) is served by a real
qemu-storage-daemon. We time `nbdcopy` of the disk's NBD export to a file (synced), a
full export (fleecing, dirty bitmaps, zstd, commit), then change 5% of the blocks and time
an incremental export. Targets (DESIGN.md): full >= 0.5x nbdcopy with zstd; incremental
of 5% changed <= 8% of the full export's time.
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

from hypersdk.providers.factory import open_provider
from hypersdk.state.history import History
from imagegen import MIB, block_data, exporter, make_image, timed


def nbdcopy(uri: str, out: Path) -> None:
    subprocess.run(["nbdcopy", uri, str(out)], check=True)
    os.sync()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--compress", default="zstd")
    ap.add_argument("--dir", default=None)
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
            history = History(work / "state")
            provider.enable_cbt()
            t_copy, _ = timed(nbdcopy, qsd.nbd_uri, work / "copy.raw")
            (work / "copy.raw").unlink()

            export = exporter(provider, history, work / "repo", args.compress, args.parallel)

            t_full, full = timed(export, False)
            rng = random.Random(5)
            blocks = rng.sample(range(size // MIB), max(1, size // MIB // 20))
            for b in blocks:
                qsd.write(b * MIB, block_data(rng, MIB) or os.urandom(MIB))
            qsd.flush()
            t_inc, inc = timed(export, True)
            provider.close()
        mib = args.size_mib
        print(
            f"\n{mib} MiB qcow2 on qemu-storage-daemon, {args.parallel} threads, "
            f"{os.cpu_count()} cores, compression {args.compress}"
        )
        print(f"  nbdcopy to a file (reference)      {mib / t_copy:8.0f} MiB/s  {t_copy:6.2f} s")
        print(
            f"  full export                         {mib / t_full:8.0f} MiB/s  {t_full:6.2f} s"
            f"  {t_copy / t_full:.2f}x nbdcopy"
        )
        print(
            f"  incremental, {len(blocks)} blocks (5%) changed "
            f"{inc.bytes_read / MIB / t_inc:6.0f} MiB/s  {t_inc:6.2f} s"
            f"  {100 * t_inc / t_full:.1f}% of full, {100 * t_inc / t_copy:.1f}% of nbdcopy"
        )
        print(
            f"  modes: {full.mode}, {inc.mode}; stored {full.bytes_stored / MIB:.0f} MiB "
            f"then {inc.bytes_stored / MIB:.0f} MiB"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
