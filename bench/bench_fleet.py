"""Fleet benchmark: the same nightly batch through hypervisord --broker with one
hyperworker, then with two, in one run; the ratio is the fleet's scaling.

    .venv/bin/python bench/bench_fleet.py [--vms 8] [--size-mib 64] [--change 0.05]

N qcow2 images (bench/imagegen.py's mix: half compressible, 15% zero) get CBT, then:

1. one worker (concurrency 2): full exports of every VM into a fresh repository, then
   ``--change`` of each image's blocks rewritten and incremental exports (a night);
2. two workers (concurrency 2 each): the same into another fresh repository.

The full exports give a worker's throughput; the incrementals the per-VM cost of a night
(fixed cost + changed bytes): the sizing model's inputs (docs/fleet.md).

Everything runs on this machine: redis-server, the daemon, the workers and the images
share its cores. On 2 cores a second worker has little to gain (an export is CPU-bound:
hashing and zstd); the ratio says what this machine gives, not what two proxies give.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from tests.daemon.live import Hypervisord, wait_job
from tests.fleet.rigs import RedisServer, Worker

from imagegen import MIB, make_image


def rewrite(image: Path, fraction: float, seed: int) -> int:
    """Rewrite ``fraction`` of the image's 1 MiB blocks through qemu-io (so that the
    qcow2's persistent dirty bitmap sees it, as a guest's writes would be)."""
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(image)], check=True, capture_output=True
    )
    size = int(json.loads(info.stdout)["virtual-size"])
    rng = random.Random(seed)
    blocks = rng.sample(range(size // MIB), max(1, int(size // MIB * fraction)))
    commands = []
    for b in blocks:
        commands += ["-c", f"write -P {rng.randrange(1, 255)} {b * MIB} {MIB}"]
    subprocess.run(
        ["qemu-io", "-f", "qcow2", *commands, str(image)], check=True, capture_output=True
    )
    return len(blocks)


def batch(
    http: httpx.Client, vms: list[str], output: Path, incremental: bool
) -> tuple[float, int, list[str]]:
    """Export every VM; returns (wall seconds, bytes read, the exports' modes)."""
    started = time.monotonic()
    ids = []
    for vm in vms:
        body: dict[str, Any] = {"vm_path": vm, "output": str(output), "incremental": incremental}
        r = http.post("/exports", json=body)
        r.raise_for_status()
        ids.append(r.json()["id"])
    jobs = [wait_job(http, j, timeout=3600) for j in ids]
    wall = time.monotonic() - started
    bad = [j for j in jobs if j["state"] != "succeeded"]
    if bad:
        raise SystemExit(f"bench_fleet: {len(bad)} exports failed: {bad[0]['error']}")
    modes = [str(j["result"]["mode"]) for j in jobs]
    return wall, sum(int(j["result"]["bytes_read"]) for j in jobs), modes


@dataclass(frozen=True)
class Round:
    full: float
    full_read: int
    change: float
    inc: float
    inc_read: int
    modes: list[str]


def run_round(http: httpx.Client, vms: list[str], repo: Path, change: float, seed: int) -> Round:
    """Full exports of every VM into ``repo``, ``change`` of each rewritten, incrementals."""
    full, full_read, _ = batch(http, vms, repo, incremental=False)
    for i, vm in enumerate(vms):
        rewrite(Path(vm.removeprefix("qcow2:")), change, seed=seed * 100 + i)
    inc, inc_read, modes = batch(http, vms, repo, incremental=True)
    return Round(full, full_read, change, inc, inc_read, sorted(set(modes)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vms", type=int, default=8)
    p.add_argument("--size-mib", type=int, default=64)
    p.add_argument("--change", type=float, default=0.05)
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bfleet-"))
    workers: list[Worker] = []
    try:
        vms = []
        for i in range(args.vms):
            raw = work / f"vm{i}.raw"
            make_image(raw, args.size_mib * MIB, seed=100 + i)
            image = work / f"vm{i}.qcow2"
            subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(image)], check=True)
            raw.unlink()
            vms.append(f"qcow2:{image}")
        config = work / "hvd.toml"
        config.write_text(
            "[fleet]\ndatastore_limit = 0\nhost_limit = 0\n"
        )  # the workers, not the limits
        config.chmod(0o600)
        with RedisServer(work / "redis") as redis:
            args_ = ("--broker", redis.url, "--config", str(config))
            with Hypervisord(work / "hvd", allow=(work,), args=args_) as hvd:
                http = hvd.client()
                for vm in vms:
                    http.post("/cbt/enable", json={"vm_path": vm}).raise_for_status()
                for i in (1, 2):
                    workers.append(Worker(work / "w", redis.url, f"w{i}", "--concurrency", "2"))
                workers[0].start()
                workers[0].wait_ready()
                results = {1: run_round(http, vms, work / "repo1", args.change, seed=7)}
                workers[1].start()
                workers[1].wait_ready()
                results[2] = run_round(http, vms, work / "repo2", args.change, seed=8)
    finally:
        for w in workers:
            w.stop()
        shutil.rmtree(work, ignore_errors=True)

    size = args.vms * args.size_mib
    print(f"fleet bench: {args.vms} VMs x {args.size_mib} MiB qcow2, {os.cpu_count()} cores")
    for n, r in results.items():
        print(
            f"  {n} worker(s): full {r.full:6.2f} s  {r.full_read / MIB / r.full:7.1f} MiB/s "
            f"({size} MiB) | incremental {r.change:.0%} ({r.inc_read / MIB:.0f} MiB) "
            f"{r.inc:5.2f} s, {r.inc / args.vms:.3f} s per VM ({', '.join(r.modes)})"
        )
    print(f"  ratio 2 workers / 1 worker, full: {results[1].full / results[2].full:.2f}x")
    print(f"  ratio 2 workers / 1 worker, incremental: {results[1].inc / results[2].inc:.2f}x")
    one = results[1]
    per_vm = one.inc * 2 / args.vms  # worker slot-seconds per VM (concurrency 2)
    print(
        f"  sizing inputs (1 worker): full throughput {one.full_read / MIB / one.full:.1f} MiB/s, "
        f"a {args.change:.0%} incremental of a {args.size_mib} MiB VM takes {per_vm:.3f} "
        "slot-seconds"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
