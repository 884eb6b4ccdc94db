"""gc benchmark: time and peak memory against the number of chunks.

    .venv/bin/python bench/bench_gc.py [--sizes 10000,100000,1000000]

For each size N, a local repository gets N tiny chunks and one generation whose index
references half of them; then ``hyperctl gc`` runs in its own process and we read its
wall time and peak RSS (VmHWM). The reference in the same run is the same process
importing the package and opening the repository without collecting (its RSS is the
floor). gc marks into a set spilled to disk by first byte and sweeps one partition at a
time (repository/markset.py), so its memory should stay flat as N grows 100x; its time
grows with N (it reads and deletes objects).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypersdk.repository.index import ENTRY, build_index
from hypersdk.repository.manifest import DiskRecord, Manifest, iso, new_generation_id, utc_now
from hypersdk.repository.repository import Repository

BS = 64 * 1024

PEAK = """
import resource, sys, time
t0 = time.perf_counter()
from hypersdk.cli.hyperctl import main
args = sys.argv[1:]
code = main(args) if args else 0
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
print(f"RESULT {time.perf_counter() - t0:.3f} {hwm}", file=sys.stderr)
sys.exit(code)
"""


def make_repository(root: Path, n: int) -> Repository:
    repo = Repository.open_or_init(root, block_size=BS)
    kept = n // 2
    entries = bytearray(kept * ENTRY)
    batch = repo.chunks.stage()
    for i in range(n):
        plain = i.to_bytes(8, "little") * 4
        cid = repo.codec.chunk_id(plain)
        batch.put(cid, repo.codec.seal_parts(plain, cid))
        if i < kept:
            entries[i * ENTRY : (i + 1) * ENTRY] = cid
    started = utc_now()
    gen = new_generation_id(started)
    with repo.writer("vm1"):
        key, built = repo.build_index(
            "vm1", gen, "disk-0",
            partial(build_index, capacity=kept * BS, block_size=BS, base=None,
                    read_runs=[(0, kept)], read_entries=entries, zero_runs=[]),
        )  # fmt: skip
        manifest = Manifest(
            id=gen, vm_id="vm1", vm_name="vm1", platform="raw", repository_id=repo.config.id,
            parent=None, type="full", reason="bench", block_size=BS, created=iso(started),
            completed=iso(utc_now()), tool_version="bench",
            disks=[DiskRecord("disk-0", kept * BS, "c", key, built.sha256, built.blocks,
                              built.zero_blocks)],
        )  # fmt: skip
        repo.commit(manifest, batch)
    return repo


def measure(args: list[str]) -> tuple[float, int]:
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, *args], capture_output=True, text=True, check=True
    )
    line = next(x for x in proc.stderr.splitlines() if x.startswith("RESULT"))
    _, seconds, hwm = line.split()
    return float(seconds), int(hwm) // 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    _, floor_mib = measure([])
    print(f"\ngc against the number of chunks (half referenced), {os.cpu_count()} cores")
    print(f"  reference: the same process doing nothing: {floor_mib} MiB peak RSS")
    print(
        f"  {'chunks':>9} {'build':>8} {'gc':>8} {'per 1e5':>9} {'peak RSS':>9} {'above ref':>10}"
    )
    first: tuple[int, float, int] | None = None
    for n in sizes:
        work = Path(tempfile.mkdtemp(prefix="hypersdk-bench-gc-", dir=args.dir))
        try:
            t0 = time.perf_counter()
            repo = make_repository(work / "repo", n)
            built = time.perf_counter() - t0
            seconds, mib = measure(["gc", "--output", str(repo.root), "--json"])
            assert sum(1 for _ in repo.chunks.ids()) == n - n // 2
            print(
                f"  {n:>9} {built:7.1f}s {seconds:7.2f}s {seconds / n * 1e5:8.2f}s "
                f"{mib:>6} MiB {mib - floor_mib:>6} MiB"
            )
            first = first or (n, seconds, mib)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if first is not None and len(sizes) > 1:
        n0, s0, m0 = first
        print(
            f"  {sizes[-1] // n0}x the chunks: {seconds / s0:.1f}x the time, "
            f"{(mib - floor_mib) / max(1, m0 - floor_mib):.2f}x the memory above the reference"
        )


if __name__ == "__main__":
    main()
