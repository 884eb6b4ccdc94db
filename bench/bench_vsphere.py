"""vSphere benchmark: hyperexport's engine over the lab's /folder Range reads, against a
plain ranged download of the same flat file over the same number of connections, same run.

    .venv/bin/python bench/bench_vsphere.py [--size-mib 1024] [--parallel 4] [--runs 3]

A lab VM with one disk (half compressible data, 15% zero blocks, written through the
lab's guest writes) has CBT enabled. Best of ``--runs``, we time:
(1) the reference: ``curl`` processes, one per connection (``--parallel`` of them), each
downloading one contiguous ``--range`` of the flat file (1/parallel of it) over one
keep-alive HTTPS connection; (2) the reader alone: a backup session's reader (snapshot's
flat file, the session's read plan) read block by block by ``--parallel`` threads in the
engine's order, no hashing or storing, the vSphere read path by itself; (3) a full export
(snapshot, QueryChangedDiskAreas "*", Range reads, zstd, commit); then 5% of the 1 MiB
blocks are rewritten and (4) an incremental export is timed. The ratios printed are
speeds (MiB of disk per second) against the reference's. Target (issue 14): reads >= 0.8x
the plain ranged download. The lab is on loopback: network cost is near zero here, so
this measures CPU per byte on both sides.

(5) Sub-block incrementals: a second repository gets its own full export, then each
round rewrites 5% of the data as scattered 4-64 KiB writes and exports an incremental
into both repositories, one reading whole blocks (patching off) and one reading only
the changed CBT areas and patching them onto the parent's chunks (engine.patch, the
vSphere default); both see the same changes. Printed: MiB read from the lab and seconds
(best of ``--runs``), and whether both generations restore to the lab's flat file.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypersdk.engine.plan import READ, plan_blocks
from hypersdk.lab import VcsimLab, VmSpec
from hypersdk.providers.base import Provider
from hypersdk.providers.connection import VsphereSettings
from hypersdk.providers.factory import open_provider
from hypersdk.providers.vsphere import _reader
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import restore_disk
from hypersdk.state.history import History
from imagegen import MIB, block_data, exporter, timed
from summary import record

VM = "/DC0/vm/bench"


def download(url: str, cookie: str, size: int, parallel: int) -> int:
    """Reference: ``parallel`` curl processes, each one contiguous range over one
    HTTPS connection, the bodies thrown away."""
    step = -(-size // parallel)
    procs = []
    for i in range(parallel):
        first, last = i * step, min((i + 1) * step, size) - 1
        cmd = ["curl", "-sSfk", "-o", "/dev/null", "-w", "%{size_download}"]
        cmd += ["-H", f"Cookie: {cookie}", "-H", "Accept-Encoding: identity"]
        cmd += ["-r", f"{first}-{last}", url]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE))
    got = 0
    for proc in procs:
        out, _ = proc.communicate()
        assert proc.returncode == 0, f"curl exited with {proc.returncode}"
        got += int(out)
    return got


def read_all(provider: Provider, parallel: int) -> tuple[int, int, int]:
    """The session's reader alone, in the engine's pattern: block by block, in order,
    ``parallel`` threads, a window of 2 * parallel blocks. Returns (bytes, requests,
    connections)."""
    with provider.open_backup(None) as session:
        (disk,) = session.disks
        plan = plan_blocks(disk.capacity_bytes, MIB, disk.changed)
        reader = disk.reader
        window: deque[Future[int]] = deque()
        got = 0
        with ThreadPoolExecutor(parallel) as pool:
            for block in plan.blocks(READ):
                window.append(pool.submit(lambda b: len(reader.pread(b * MIB, MIB)), block))
                if len(window) >= 2 * parallel:
                    got += window.popleft().result()
            while window:
                got += window.popleft().result()
        client = session._client  # type: ignore[attr-defined]
        return got, reader.requests, getattr(client, "connections", -1)


def scattered_writes(lab: VcsimLab, rng: random.Random, size: int, fraction: float) -> int:
    """Guest writes of 4-64 KiB at random places until ``fraction`` of the disk is
    written; returns the bytes written."""
    written = 0
    while written < fraction * size:
        n = rng.randrange(1, 17) * 4096
        offset = rng.randrange(0, (size - n) // 4096) * 4096
        lab.write(VM, offset, rng.randbytes(n))
        written += n
    return written


def lab_flat(lab: VcsimLab) -> bytes:
    return lab.vm(VM).disk().flat_path.read_bytes()


def restored(output: Path, vm: str, generation: str, work: Path) -> bytes:
    repo = Repository.open(output)
    out = work / "restored.raw"
    restore_disk(repo, repo.generation(vm, generation), "disk-2000", out, force=True)
    data = out.read_bytes()
    out.unlink()
    return data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
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
        p = args.parallel
        # Interleaved, so that both see the same load of a shared machine.
        refs, reads = [], []
        for _ in range(args.runs):
            refs.append(timed(download, url, f"{name}={value}", size, p))
            reads.append(timed(read_all, provider, p))
        t_ref, got = min(refs, key=lambda r: r[0])
        assert got == size
        t_read, (n_read, n_requests, n_conns) = min(reads, key=lambda r: r[0])

        export = exporter(provider, history, work / "repo", args.compress, p)
        t_full, full = timed(export, False)  # a second full would be an incremental
        blocks = rng.sample(range(size // MIB), max(1, size // MIB // 20))
        for b in blocks:
            lab.write(VM, b * MIB, block_data(rng, MIB) or os.urandom(MIB))
        t_inc, inc = timed(export, True)

        def setup_only() -> None:
            since = {d["key"]: d["change_id"] for d in inc.disks}
            with provider.open_backup(since):
                pass

        t_setup, _ = timed(setup_only)  # snapshot + QueryChangedDiskAreas + removal

        # (5) sub-block incrementals, patching off (repository 1) and on (repository 2)
        history2 = History(work / "state2")
        export2 = exporter(provider, history2, work / "repo2", args.compress, p)
        export2(False)
        whole_runs, patch_runs = [], []
        default = _reader.HttpRangeReader.patch_threshold
        for r in range(args.runs):
            scattered_writes(lab, rng, size, 0.05)
            for patching in (False, True) if r % 2 == 0 else (True, False):
                _reader.HttpRangeReader.patch_threshold = default if patching else 0.0
                try:
                    rec = timed(export2 if patching else export, True)
                finally:
                    _reader.HttpRangeReader.patch_threshold = default
                (patch_runs if patching else whole_runs).append(rec)
        now = lab_flat(lab)
        exact = all(
            restored(output, report.vm, report.generation, work) == now
            for output, (_, report) in (
                (work / "repo", whole_runs[-1]),
                (work / "repo2", patch_runs[-1]),
            )
        )
        t_whole, whole = min(whole_runs, key=lambda x: x[0])
        t_patch, patch = min(patch_runs, key=lambda x: x[0])
        provider.close()
        mib = args.size_mib
        ref = mib / t_ref
        print(
            f"\n{mib} MiB lab disk over HTTPS /folder, {p} connections/threads, "
            f"{os.cpu_count()} cores, compression {args.compress}, best of {args.runs}"
        )
        print(
            f"  plain ranged download (reference: {p} curl, one range each) "
            f"{ref:6.0f} MiB/s  {t_ref:6.2f} s"
        )
        print(
            f"  vSphere reads (session reader, engine's block order, {n_read / MIB:.0f} MiB) "
            f"{n_read / MIB / t_read:6.0f} MiB/s  {t_read:6.2f} s  "
            f"{n_read / MIB / t_read / ref:.2f}x the reference  "
            f"({n_requests} range GETs, {n_conns} connections)"
        )
        print(
            f"  full export ({full.bytes_read / MIB:.0f} MiB allocated read) "
            f"{full.bytes_read / MIB / t_full:6.0f} MiB/s  {t_full:6.2f} s"
            f"  {full.bytes_read / MIB / t_full / ref:.2f}x the reference"
            f" (disk size / time: {mib / t_full:.0f} MiB/s, {mib / t_full / ref:.2f}x)"
        )
        print(
            f"  incremental, {len(blocks)} blocks (5%) changed "
            f"{inc.bytes_read / MIB / t_inc:6.0f} MiB/s  {t_inc:6.2f} s"
            f"  {100 * t_inc / t_full:.1f}% of full"
        )
        print(
            f"  a session alone (snapshot, changed-areas query, snapshot removal) {t_setup:.2f} s"
        )
        print(
            f"  modes: {full.mode}, {inc.mode}; read {full.bytes_read / MIB:.0f} then "
            f"{inc.bytes_read / MIB:.0f} MiB; stored {full.bytes_stored / MIB:.0f} MiB "
            f"then {inc.bytes_stored / MIB:.0f} MiB"
        )
        record("vsphere", "vSphere reads / plain ranged download (same connections)",
               n_read / MIB / t_read / ref, at_least=0.8)  # fmt: skip
        record("vsphere", "a session alone (snapshot, changed areas, removal)", t_setup, "s")
        record("vsphere", "sub-block incremental: bytes read, patched / whole blocks",
               patch.bytes_read / max(1, whole.bytes_read))  # fmt: skip
        record("vsphere", "sub-block incremental: time, patched / whole blocks", t_patch / t_whole)
        print(
            "  sub-block incremental (5% of the data as scattered 4-64 KiB writes), "
            f"best of {args.runs}:"
        )
        print(f"    whole blocks  read {whole.bytes_read / MIB:6.1f} MiB  {t_whole:6.2f} s")
        print(
            f"    patched       read {patch.bytes_read / MIB:6.1f} MiB  {t_patch:6.2f} s"
            f"  {patch.bytes_read / max(1, whole.bytes_read):.2f}x the bytes, "
            f"{t_patch / t_whole:.2f}x the time; restores exact: {exact}"
        )
    finally:
        lab.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
