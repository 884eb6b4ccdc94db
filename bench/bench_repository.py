"""Repository benchmark: export, incremental and restore speed next to `cp` in the same run.

    .venv/bin/python bench/bench_repository.py [--size-mib 1024] [--parallel 4]

Every timing includes making the data durable (the export's syncfs, restore's fsync,
`cp` followed by `sync`), and the page cache holds the source in every case, so the
ratios compare like with like. Targets (DESIGN.md, issue 2): full export >= 400 MiB/s
with zstd on 2 cores, restore >= 500 MiB/s, incremental time < 8% of the full export's.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.chain import export

from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import restore_disk
from imagegen import MIB, change_blocks, extents_since, make_image, timed


def cp(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    os.sync()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--dir", default=None, help="work folder (default: a temp folder)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hypersdk-bench-", dir=args.dir))
    size = args.size_mib * MIB
    mib = args.size_mib
    try:
        img = work / "disk.raw"
        make_image(img, size)
        rows: list[tuple[str, float, str]] = []

        t_cp, _ = timed(cp, img, work / "copy.raw")
        (work / "copy.raw").unlink()
        rows.append(("cp (reference)", mib / t_cp, ""))

        repo = Repository.open_or_init(work / "repo-zstd")
        t_full, full = timed(export, repo, {"disk-0": img}, parallel=args.parallel)
        rows.append(("full export, zstd-1", mib / t_full, f"{t_cp / t_full:.2f}x cp"))

        plain = Repository.open_or_init(work / "repo-none", compression="none")
        t_plain, _ = timed(export, plain, {"disk-0": img}, parallel=args.parallel)
        rows.append(("full export, no compression", mib / t_plain, f"{t_cp / t_plain:.2f}x cp"))
        shutil.rmtree(work / "repo-none")

        changed = change_blocks(img, 0.05)
        extents = extents_since(repo, full.manifest, "disk-0", img)
        t_inc, inc = timed(
            export,
            repo,
            {"disk-0": img},
            changed={"disk-0": extents},
            parent=full.manifest,
            parallel=args.parallel,
        )
        rows.append(
            (
                f"incremental, {changed} blocks (5%) changed",
                inc.bytes_read / MIB / t_inc,
                f"{100 * t_inc / t_full:.1f}% of full time",
            )
        )

        out = work / "restored.raw"
        t_res, _ = timed(restore_disk, repo, inc.manifest, "disk-0", out, parallel=args.parallel)
        rows.append(("restore (raw, sparse)", mib / t_res, f"{t_cp / t_res:.2f}x cp"))

        print(f"\n{mib} MiB image, {args.parallel} threads, {os.cpu_count()} cores, {work}")
        for name, speed, ratio in rows:
            print(f"  {name:<40} {speed:8.0f} MiB/s  {ratio}")
        stored = full.bytes_stored / MIB
        print(
            f"  stored by the full export: {stored:.0f} MiB of {mib} MiB "
            f"({full.manifest.stats['zero_blocks']:.0f} zero blocks)"
        )
        # ru_maxrss is in KiB on Linux; it must stay flat as the disk grows (< 256 MiB)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  peak RSS of this process: {peak:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
