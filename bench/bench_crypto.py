"""Encryption benchmark: encrypted against plain repositories in the same run.

    .venv/bin/python bench/bench_crypto.py [--size-mib 512] [--parallel 4] [--rounds 2]

Exports the same image into a plain and an encrypted repository (same compression),
then an incremental (5% changed), then restores each, and prints each encrypted timing
as a ratio of the plain one (1.00x: encryption costs nothing). Rounds alternate plain and
encrypted so that neither gets a warmer cache; the best round counts. Every timing
includes making the data durable (syncfs / fsync), as bench_repository.py does. The
scrypt unlock (~0.18 s, once per command) is measured on its own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.chain import export

from hypersdk.repository.keys import Password
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import restore_disk
from imagegen import MIB, change_blocks, extents_since, make_image, timed

PASSWORD = Password(value="bench password")


def one_round(work: Path, img: Path, encrypted: bool, parallel: int) -> dict[str, float]:
    root = work / ("repo-enc" if encrypted else "repo-plain")
    shutil.rmtree(root, ignore_errors=True)
    repo = Repository.open_or_init(root, password=PASSWORD, encrypt=encrypted)
    t_full, full = timed(export, repo, {"disk-0": img}, parallel=parallel)
    backup = work / "base.raw"
    shutil.copyfile(img, backup)  # the incremental changes the image: put it back after
    try:
        change_blocks(img, 0.05)
        extents = extents_since(repo, full.manifest, "disk-0", img)
        t_inc, inc = timed(
            export,
            repo,
            {"disk-0": img},
            changed={"disk-0": extents},
            parent=full.manifest,
            parallel=parallel,
        )
    finally:
        os.replace(backup, img)
    out = work / "restored.raw"
    t_res, _ = timed(restore_disk, repo, inc.manifest, "disk-0", out, parallel=parallel)
    out.unlink()
    t0 = time.perf_counter()
    if encrypted:
        Repository.open(root, password=PASSWORD)
    t_open = time.perf_counter() - t0
    shutil.rmtree(root)
    return {
        "full": t_full,
        "incremental": t_inc,
        "inc_bytes": float(inc.bytes_read),
        "restore": t_res,
        "open": t_open,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dir", default=None, help="work folder (default: a temp folder)")
    args = ap.parse_args()
    os.environ.pop("HYPERSDK_INSECURE_KDF", None)  # measure the real scrypt cost
    work = Path(tempfile.mkdtemp(prefix="hypersdk-bench-crypto-", dir=args.dir))
    mib = args.size_mib
    try:
        img = work / "disk.raw"
        make_image(img, mib * MIB)
        best: dict[bool, dict[str, float]] = {}
        for _ in range(args.rounds):
            for encrypted in (False, True):
                got = one_round(work, img, encrypted, args.parallel)
                prev = best.get(encrypted)
                best[encrypted] = (
                    got if prev is None else {k: min(v, prev[k]) for k, v in got.items()}
                )
        plain, enc = best[False], best[True]
        print(f"\n{mib} MiB image, {args.parallel} threads, {os.cpu_count()} cores, best of "
              f"{args.rounds}")  # fmt: skip
        print(f"  {'':<22} {'plain':>12} {'encrypted':>12}  encrypted/plain throughput")
        for name, size in (
            ("full export", mib),
            ("incremental (5%)", plain["inc_bytes"] / MIB),
            ("restore", mib),
        ):
            key = name.split()[0] if name != "full export" else "full"
            p, e = size / plain[key], size / enc[key]
            print(f"  {name:<22} {p:8.0f} MiB/s {e:8.0f} MiB/s  {e / p:.2f}x")
        print(f"  unlock (scrypt + HKDF, once per command): {enc['open'] * 1000:.0f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
