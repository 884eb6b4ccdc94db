"""Incremental restore next to a full restore of the same generation, in one run.

    .venv/bin/python bench/bench_restore_incremental.py [--size-mib 512] [--changed 0.05]

A disk is exported (F), ``--changed`` of its blocks are rewritten and exported again (G).
Then G is restored three ways into files that hold F: a full restore to a new file
(today's ``hyperctl restore``), ``--since F`` (writes only the changed blocks) and
``--compare`` (reads and hashes the whole target, writes the changed blocks). Every
timing includes the final fsync; each result is checked byte-identical to G. Printed:
seconds, MiB/s of disk covered, and the time as a ratio of the full restore's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.chain import export

from hypersdk.engine.restore_into import prepare_into, run_into
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import restore_disk
from imagegen import MIB, change_blocks, extents_since, make_image, sha256_file, timed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--changed", type=float, default=0.05, help="fraction of blocks changed")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--dir", default=None, help="work folder (default: a temp folder)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hypersdk-bench-", dir=args.dir))
    mib = args.size_mib
    try:
        img = work / "disk.raw"
        make_image(img, mib * MIB)
        repo = Repository.open_or_init(work / "repo")
        f = export(repo, {"disk-0": img}, parallel=args.parallel).manifest
        changed = change_blocks(img, args.changed)
        ext = {"disk-0": extents_since(repo, f, "disk-0", img)}
        g = export(repo, {"disk-0": img}, changed=ext, parent=f, parallel=args.parallel).manifest
        want = sha256_file(img)

        holds_f = work / "f.raw"
        restore_disk(repo, f, "disk-0", holds_f)

        full_out = work / "full.raw"
        t_full, _ = timed(restore_disk, repo, g, "disk-0", full_out, parallel=args.parallel)
        assert sha256_file(full_out) == want
        full_out.unlink()

        rows = [("full restore (reference)", t_full, "")]
        for mode in ("since", "compare"):
            target = work / f"{mode}.raw"
            shutil.copyfile(holds_f, target)
            job = prepare_into(
                repo.root,
                "vm1",
                g.id,
                None,
                str(target),
                since=f.id if mode == "since" else None,
                compare=mode == "compare",
            )
            t, result = timed(run_into, job, parallel=args.parallel)
            assert sha256_file(target) == want, mode
            note = (
                f"{t / t_full:.3f}x full, {result.blocks_changed} blocks, "
                f"{result.bytes_written // MIB} MiB written"
            )
            rows.append(("--since F" if mode == "since" else "--compare", t, note))
            target.unlink()

        print(f"disk {mib} MiB, {changed} blocks of 1 MiB changed ({args.changed:.0%})")
        for name, t, note in rows:
            print(f"  {name:26} {t:7.3f} s  {mib / t:8.0f} MiB/s  {note}")
        since_t = rows[1][1]
        print(f"incremental restore (--since) / full restore: {since_t / t_full:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
