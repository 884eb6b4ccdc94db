"""Peers benchmark: hyperexport against restic and borg, one image, one run.

    .venv/bin/python bench/bench_peers.py [--size-mib 1024] [--parallel 4]
    .venv/bin/python bench/bench_peers.py --size-mib 64     # a quick check

One raw image (half compressible data, 15% zero blocks) and a qcow2 copy of it. Each tool
makes a full backup, then 5% of the data is rewritten in scattered regions (the same bytes
at the same offsets in both images) and each tool makes a second backup:
- hyperexport: the real CLI on ``qcow2:`` with CBT on; the changes go through ``qemu-io``
  so the image's persistent dirty bitmap records them, and the second run is incremental;
- restic (``--compression auto``, repository format 2) and borg (``--compression zstd,1``,
  no encryption) back up the raw file into local repositories: they read it whole each time.
Every timing starts with no dirty pages and ends with the data synced; stored bytes are the
growth of each repository folder. The table gives each time as a multiple of the fastest
peer's (restic or borg): below 1 is faster. Exits 1 with one line if a tool is missing or
a backup fails. restic and borg come from Debian (`make bench` installs them).
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imagegen import MIB, block_data, make_image, timed
from summary import record

TOOLS = ("restic", "borg", "qemu-img", "qemu-io", "qemu-storage-daemon")
HYPEREXPORT = [sys.executable, "-m", "hypersdk.cli.hyperexport"]
# qemu-io takes one command per -c; keep each call's argument list modest
QEMU_IO_BATCH = 256


class BenchError(Exception):
    """A missing tool or a failed backup: printed as one line, exit status 1."""


@dataclass(frozen=True)
class Region:
    offset: int
    data: bytes


@dataclass
class Result:
    tool: str
    full_s: float = 0.0
    full_bytes: int = 0
    inc_s: float = 0.0
    inc_bytes: int = 0


def run(argv: Sequence[str], what: str, env: dict[str, str] | None = None) -> str:
    """Run a tool to completion; its stdout, or BenchError with its last stderr line."""
    proc = subprocess.run(list(argv), env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        last = lines[-1] if lines else "(no output)"
        raise BenchError(f"{what} failed (exit {proc.returncode}): {last}")
    return proc.stdout


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def scattered_regions(size: int, fraction: float, seed: int = 7) -> list[Region]:
    """Non-overlapping regions of 64 KiB to 1 MiB (4 KiB aligned, most not on a 1 MiB
    boundary), one per distinct 1 MiB slot, until ``fraction`` of the image is covered."""
    rng = random.Random(seed)
    slots = list(range(size // MIB))
    rng.shuffle(slots)
    target = max(64 * 1024, int(size * fraction))
    regions: list[Region] = []
    total = 0
    for slot in slots:
        if total >= target:
            break
        length = min(rng.randrange(16, 257) * 4096, MIB, target - total)
        length = max(4096, length // 4096 * 4096)
        start = slot * MIB + rng.randrange(0, (MIB - length) // 4096 + 1) * 4096
        data = block_data(rng, length)
        if not any(data):  # a zero write over zeros would change nothing
            data = rng.randbytes(length)
        regions.append(Region(start, data))
        total += length
    regions.sort(key=lambda r: r.offset)
    return regions


def apply_changes(raw: Path, qcow2: Path, regions: list[Region], patches: Path) -> None:
    """The same bytes into both images; the qcow2 through qemu-io, so its dirty bitmap
    sees them as a guest's writes would be seen."""
    with open(raw, "r+b") as f:
        for r in regions:
            f.seek(r.offset)
            f.write(r.data)
    patches.mkdir()
    commands: list[str] = []
    for i, r in enumerate(regions):
        src = patches / f"{i}.bin"
        src.write_bytes(r.data)
        commands.append(f"write -q -s {src} {r.offset} {len(r.data)}")
    for i in range(0, len(commands), QEMU_IO_BATCH):
        argv = ["qemu-io", "-f", "qcow2"]
        for c in commands[i : i + QEMU_IO_BATCH]:
            argv += ["-c", c]
        run([*argv, str(qcow2)], "qemu-io writing the changes")
    shutil.rmtree(patches)
    os.sync()
    run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", str(raw), str(qcow2)],
        "qemu-img compare (the two images must hold the same data)")  # fmt: skip


class Peers:
    """The three tools, each with its own repository and environment in ``work``."""

    def __init__(self, work: Path, raw: Path, qcow2: Path, parallel: int) -> None:
        self.raw, self.qcow2, self.parallel = raw, qcow2, parallel
        self.repos = {t: work / f"repo-{t}" for t in ("hyperexport", "restic", "borg")}
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "BORG_"))}
        self.env_hyper = {**base, "HYPERSDK_STATE_DIR": str(work / "hypersdk-state")}
        self.env_restic = {
            **base,
            "RESTIC_REPOSITORY": str(self.repos["restic"]),
            "RESTIC_PASSWORD": "bench",
            "RESTIC_CACHE_DIR": str(work / "restic-cache"),
        }
        self.env_borg = {
            **base,
            "BORG_REPO": str(self.repos["borg"]),
            "BORG_BASE_DIR": str(work / "borg-home"),
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
            "BORG_PASSPHRASE": "",
        }
        self.bytes_read: dict[str, int] = {}  # hyperexport's own count, by mode

    def prepare(self) -> None:
        """Turn CBT on and create the peers' repositories: none of it is timed."""
        run([*HYPEREXPORT, "--vm", f"qcow2:{self.qcow2}", "--enable-cbt", "--quiet"],
            "hyperexport --enable-cbt", self.env_hyper)  # fmt: skip
        run(["restic", "init", "--repository-version", "2"], "restic init", self.env_restic)
        run(["borg", "init", "--encryption", "none"], "borg init", self.env_borg)

    def hyperexport(self, incremental: bool) -> None:
        repo = str(self.repos["hyperexport"])
        argv = [*HYPEREXPORT, "--vm", f"qcow2:{self.qcow2}", "--output", repo, "--json"]
        argv += ["--parallel", str(self.parallel)]
        argv += ["--incremental"] if incremental else ["--force-full"]
        want = "incremental" if incremental else "full"
        report = json.loads(run(argv, f"hyperexport {want}", self.env_hyper))
        if report.get("mode") != want:
            raise BenchError(f"hyperexport ran {report.get('mode')}: {report.get('reason')}")
        self.bytes_read[want] = int(report["bytes_read"])
        os.sync()

    def restic(self, incremental: bool) -> None:
        what = "restic backup " + ("second" if incremental else "first")
        argv = ["restic", "backup", "--compression", "auto", "--quiet", str(self.raw)]
        run(argv, what, self.env_restic)
        os.sync()

    def borg(self, incremental: bool) -> None:
        name = "inc" if incremental else "full"
        argv = ["borg", "create", "--compression", "zstd,1", f"::{name}", str(self.raw)]
        run(argv, f"borg create {name}", self.env_borg)
        os.sync()

    def measure(self, change: Callable[[], None]) -> list[Result]:
        """Full backups, ``change()``, then the second backups."""
        results = {t: Result(t) for t in self.repos}
        for incremental in (False, True):
            for tool, backup in (
                ("hyperexport", self.hyperexport),
                ("restic", self.restic),
                ("borg", self.borg),
            ):
                repo = self.repos[tool]
                before = folder_bytes(repo) if repo.exists() else 0
                seconds, _ = timed(backup, incremental)
                stored = folder_bytes(repo) - before
                r = results[tool]
                if incremental:
                    r.inc_s, r.inc_bytes = seconds, stored
                else:
                    r.full_s, r.full_bytes = seconds, stored
            if not incremental:
                change()
        return list(results.values())


def table(results: list[Result], mib: int, changed: int, regions: int, read: dict[str, int]) -> str:
    peers = [r for r in results if r.tool != "hyperexport"]
    fast_full = min(r.full_s for r in peers)
    fast_inc = min(r.inc_s for r in peers)
    head = (
        f"{'tool':<12} {'full s':>8} {'stored MiB':>10} {'x fastest':>9}   "
        f"{'incr s':>8} {'stored MiB':>10} {'x fastest':>9}"
    )
    lines = [
        f"\n{mib} MiB image, then {changed / MIB:.1f} MiB ({100 * changed / (mib * MIB):.1f}%) "
        f"changed in {regions} regions; {os.cpu_count()} cores",
        "times are wall seconds; 'x fastest' = time / the fastest of restic and borg",
        head,
        "-" * len(head),
    ]
    for r in results:
        lines.append(
            f"{r.tool:<12} {r.full_s:8.2f} {r.full_bytes / MIB:10.1f} {r.full_s / fast_full:8.2f}x"
            f"   {r.inc_s:8.2f} {r.inc_bytes / MIB:10.1f} {r.inc_s / fast_inc:8.2f}x"
        )
    lines.append(
        f"hyperexport read {read['full'] / MIB:.0f} MiB (full: allocated clusters only) and "
        f"{read['incremental'] / MIB:.0f} MiB (incremental); restic and borg read the whole "
        "file both times"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="image size (default 1024)")
    ap.add_argument("--parallel", type=int, default=4, help="hyperexport reader threads")
    ap.add_argument("--changed", type=float, default=0.05, help="fraction rewritten (0.05)")
    ap.add_argument("--dir", default=None, help="work folder (default: a temp folder)")
    args = ap.parse_args()
    if args.size_mib < 8:
        sys.exit("bench_peers: --size-mib must be at least 8")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        sys.exit(f"bench_peers: missing {', '.join(missing)} (`make bench` installs restic "
                 "and borgbackup; qemu-utils and qemu-system-common give the rest)")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="hypersdk-bench-peers-", dir=args.dir))
    size = args.size_mib * MIB
    try:
        raw, qcow2 = work / "disk.raw", work / "disk.qcow2"
        make_image(raw, size)
        run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)],
            "qemu-img convert")  # fmt: skip
        regions = scattered_regions(size, args.changed)
        peers = Peers(work, raw, qcow2, args.parallel)
        peers.prepare()
        results = peers.measure(lambda: apply_changes(raw, qcow2, regions, work / "patches"))
        changed = sum(len(r.data) for r in regions)
        print(table(results, args.size_mib, changed, len(regions), peers.bytes_read))
        ours = next(r for r in results if r.tool == "hyperexport")
        others = [r for r in results if r is not ours]
        record("peers", "hyperexport full backup time / fastest peer's (one run)",
               ours.full_s / min(r.full_s for r in others))  # fmt: skip
        record("peers", "hyperexport second backup time / fastest peer's (one run)",
               ours.inc_s / min(r.inc_s for r in others))  # fmt: skip
    except BenchError as err:
        sys.exit(f"bench_peers: {err}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
