"""Restore benchmark: a raw restore against `qemu-img convert` of the same image, same run.

    .venv/bin/python bench/bench_restore.py [--size-mib 1024] [--parallel 4] [--runs 3]

One 1 GiB image (half compressible data, 15% zero blocks, as in bench_qemu.py) is
exported once into a fresh repository (zstd, the engine's default block size). Its qcow2
is made from the same bytes. Then, ``--runs`` times, alternating:

- the reference: ``qemu-img convert -O raw`` of the qcow2 to a new file, then an fsync
  of that file, so that its bytes are as durable as a restore's;
- ``hyperctl restore`` to raw (``restore_disk``: every chunk read, its envelope and hash
  checked, decompressed, written, the file fsynced and published by a rename);
- ``hyperctl restore --format qcow2`` (qemu-img reading the generation over NBD);
- the floor of any qcow2 restore through qemu-img: ``qemu-img convert`` of the source
  raw image (a local file in page cache, nothing to decode) to qcow2 with the same flags.

Page cache: every source is read from memory, so the comparison is one of CPU and
write paths, not of whichever input happened to be cached. Before every run the qcow2,
the raw image and every chunk file of the repository are read once (untimed), and each
run starts with no dirty pages (``os.sync``). Outputs go to the same file system and
are deleted after each run.

Each line gives MiB/s of disk capacity, seconds, and the CPU seconds of this process
and its children (qemu-img): on 2 cores a run cannot be faster than its CPU work
allows. Best of ``--runs`` counts. Targets (issue 14): raw restore >= 1.0x qemu-img,
qcow2 restore >= 0.8x raw restore.
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

from tests.chain import export

from hypersdk.access.image import restore_image
from hypersdk.repository.files import fsync_path
from hypersdk.repository.repository import Repository
from imagegen import MIB, make_image, sha256_file, timed
from summary import record

TARGET_RAW = 1.0  # x qemu-img convert
TARGET_QCOW2 = 0.8  # x raw restore


def _cpu() -> float:
    """User + system CPU seconds of this process and of its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Run:
    seconds: float
    cpu: float


def measured(fn: Callable[[], object]) -> Run:
    c0 = _cpu()
    seconds, _ = timed(fn)
    return Run(seconds, _cpu() - c0)


def qemu_img_convert(src: Path, out: Path, src_fmt: str = "qcow2", fmt: str = "raw") -> None:
    """The reference (qcow2 to raw, qemu-img's defaults) or the floor of a qcow2 restore
    (raw to qcow2 with the flags ``hyperctl restore --format qcow2`` gives qemu-img)."""
    flags = ["-W", "-m", "8"] if fmt == "qcow2" else []
    cmd = ["qemu-img", "convert", "-q", *flags, "-f", src_fmt, "-O", fmt, str(src), str(out)]
    subprocess.run(cmd, check=True)
    fsync_path(out)


def warm(paths: list[Path]) -> None:
    """Read files once so that the timed runs find them in the page cache."""
    buf = bytearray(4 * MIB)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def line(label: str, mib: int, run: Run, extra: str = "") -> str:
    return (
        f"  {label:34s} {mib / run.seconds:6.0f} MiB/s {run.seconds:6.2f} s"
        f"  cpu {run.cpu:5.2f} s{extra}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--parallel", type=int, default=4, help="restore threads (the CLI default)")
    ap.add_argument("--runs", type=int, default=3, help="best of this many runs")
    ap.add_argument("--dir", default=None, help="work folder (default: a temp folder)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hypersdk-bench-restore-", dir=args.dir))
    mib = args.size_mib
    try:
        raw, qcow2 = work / "disk.raw", work / "disk.qcow2"
        make_image(raw, mib * MIB)
        subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2",
                        str(raw), str(qcow2)], check=True)  # fmt: skip
        repo = Repository.open_or_init(work / "repo")
        export(repo, {"disk-0": raw}, parallel=args.parallel)
        expected = sha256_file(raw)
        manifest = repo.generation("vm1")
        sources = [qcow2, raw, *(p for p in (work / "repo" / "data").rglob("*") if p.is_file())]

        runs: dict[str, list[Run]] = {"qemu-img": [], "raw": [], "qcow2": [], "floor": []}
        for i in range(args.runs):
            out = work / f"out{i}"
            warm(sources)
            runs["qemu-img"].append(measured(functools.partial(qemu_img_convert, qcow2, out)))
            out.unlink()
            warm(sources)
            floor = functools.partial(qemu_img_convert, raw, out, "raw", "qcow2")
            runs["floor"].append(measured(floor))
            out.unlink()
            for fmt in ("raw", "qcow2"):
                warm(sources)
                restore = functools.partial(
                    restore_image, repo, manifest, "disk-0", out, fmt=fmt, parallel=args.parallel
                )
                runs[fmt].append(measured(restore))
                if fmt == "raw" and i == 0 and sha256_file(out) != expected:
                    raise SystemExit("the raw restore does not match the source image")
                out.unlink()

        best = {k: min(v, key=lambda r: r.seconds) for k, v in runs.items()}
        raw_ratio = best["qemu-img"].seconds / best["raw"].seconds
        qcow2_ratio = best["raw"].seconds / best["qcow2"].seconds
        print(
            f"\n{mib} MiB disk (50% compressible, 35% random, 15% zero blocks), zstd, "
            f"{args.parallel} threads, {os.cpu_count()} cores, sources in page cache, "
            f"best of {args.runs}"
        )
        print(line("qemu-img convert qcow2->raw (ref)", mib, best["qemu-img"]))
        print(
            line(
                "restore --format raw",
                mib,
                best["raw"],
                f"  {raw_ratio:.2f}x qemu-img (target >= {TARGET_RAW:.1f}x)",
            )
        )
        print(
            line(
                "restore --format qcow2",
                mib,
                best["qcow2"],
                f"  {qcow2_ratio:.2f}x raw restore (target >= {TARGET_QCOW2:.1f}x)",
            )
        )
        print(
            line(
                "qemu-img raw file->qcow2 (floor)",
                mib,
                best["floor"],
                f"  qcow2 restore {best['floor'].seconds / best['qcow2'].seconds:.2f}x this; "
                f"floor {best['raw'].seconds / best['floor'].seconds:.2f}x raw restore",
            )
        )
        record("restore", "raw restore speed / qemu-img convert of the qcow2 to raw", raw_ratio,
               at_least=TARGET_RAW)  # fmt: skip
        record("restore", "qcow2 restore speed / raw restore", qcow2_ratio, at_least=TARGET_QCOW2)
        print(
            "  all runs (s): "
            + ", ".join(f"{k} " + " ".join(f"{r.seconds:.2f}" for r in v) for k, v in runs.items())
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()
