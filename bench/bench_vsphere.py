"""vSphere benchmark: hyperexport's engine over the lab's /folder Range reads, against a
plain ranged HTTPS download of the same flat file with the same parallelism, same run.

    .venv/bin/python bench/bench_vsphere.py [--size-mib 1024] [--parallel 4]

A lab VM with one disk (half compressible data, 15% zero blocks, written through the
lab's guest writes) has CBT enabled. We time (1) a plain download: httpx, one client, a
pool of ``--parallel`` connections, 1 MiB Range GETs of the whole flat file into memory
and away; (2) a full export (snapshot, QueryChangedDiskAreas "*", Range reads, zstd,
commit); then 5% of the 1 MiB blocks are rewritten and (3) an incremental export is timed.
Targets (DESIGN.md): full export >= 0.5x the reference; incremental of 5% changed <= 8%
of the full export's time. The lab is on loopback: network cost is near zero here.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypersdk.lab import VcsimLab, VmSpec
from hypersdk.providers.connection import VsphereSettings
from hypersdk.providers.factory import open_provider
from hypersdk.state.history import History
from imagegen import MIB, block_data, exporter, timed

VM = "/DC0/vm/bench"


def download(url: str, cookie: str, size: int, parallel: int) -> int:
    """Reference: ranged HTTPS GETs of the whole file, ``parallel`` at a time."""
    limits = httpx.Limits(max_connections=parallel, max_keepalive_connections=parallel)
    with httpx.Client(verify=False, limits=limits, headers={"Cookie": cookie}) as client:

        def get(offset: int) -> int:
            last = min(offset + MIB, size) - 1
            r = client.get(url, headers={"Range": f"bytes={offset}-{last}"})
            assert r.status_code == 206, r.status_code
            return len(r.content)

        with ThreadPoolExecutor(parallel) as pool:
            return sum(pool.map(get, range(0, size, MIB)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--compress", default="zstd")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hypersdk-bench-vsphere-", dir=args.dir))
    size = args.size_mib * MIB
    lab = VcsimLab(work / "lab")
    try:
        s = lab.start(vms=[VmSpec("bench", (size,))])
        rng = random.Random(1)
        for offset in range(0, size, 4 * MIB):
            chunk = b"".join(block_data(rng, MIB) for _ in range(4))
            if any(chunk):
                lab.write(VM, offset, chunk)
        settings = VsphereSettings(s.url, s.username, s.password, insecure=True)
        provider = open_provider(VM, settings)
        history = History(work / "state")
        provider.enable_cbt()

        conn = provider._conn  # type: ignore[attr-defined]
        name, value = conn.session_cookie()
        url = lab.folder_url(lab.vm(VM).disk())
        t_ref, got = timed(download, url, f"{name}={value}", size, args.parallel)
        assert got == size

        export = exporter(provider, history, work / "repo", args.compress, args.parallel)

        t_full, full = timed(export, False)
        blocks = rng.sample(range(size // MIB), max(1, size // MIB // 20))
        for b in blocks:
            lab.write(VM, b * MIB, block_data(rng, MIB) or os.urandom(MIB))
        t_inc, inc = timed(export, True)

        def setup_only() -> None:
            since = {d["key"]: d["change_id"] for d in inc.disks}
            with provider.open_backup(since):
                pass

        t_setup, _ = timed(setup_only)  # snapshot + QueryChangedDiskAreas + removal
        provider.close()
        mib = args.size_mib
        print(
            f"\n{mib} MiB lab disk over HTTPS /folder, {args.parallel} threads, "
            f"{os.cpu_count()} cores, compression {args.compress}"
        )
        print(f"  ranged HTTPS download (reference)  {mib / t_ref:8.0f} MiB/s  {t_ref:6.2f} s")
        print(
            f"  full export ({full.bytes_read / MIB:.0f} MiB allocated read) "
            f"{full.bytes_read / MIB / t_full:6.0f} MiB/s  {t_full:6.2f} s"
            f"  {t_ref / t_full:.2f}x the download's speed"
            f" (disk size / time: {mib / t_full:.0f} MiB/s)"
        )
        print(
            f"  incremental, {len(blocks)} blocks (5%) changed "
            f"{inc.bytes_read / MIB / t_inc:6.0f} MiB/s  {t_inc:6.2f} s"
            f"  {100 * t_inc / t_full:.1f}% of full, {100 * t_inc / t_ref:.1f}% of download"
        )
        print(
            f"  a session alone (snapshot, changed-areas query, snapshot removal) {t_setup:.2f} s"
        )
        print(
            f"  modes: {full.mode}, {inc.mode}; read {full.bytes_read / MIB:.0f} then "
            f"{inc.bytes_read / MIB:.0f} MiB; stored {full.bytes_stored / MIB:.0f} MiB "
            f"then {inc.bytes_stored / MIB:.0f} MiB"
        )
    finally:
        lab.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
