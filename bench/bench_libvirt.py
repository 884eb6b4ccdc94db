"""libvirt benchmark: hyperexport against virtnbdbackup on one running libvirt domain.

    .venv/bin/python bench/bench_libvirt.py [--size-mib 1024]
    .venv/bin/python bench/bench_libvirt.py --size-mib 64     # a quick check

A separate script from bench_peers.py: it starts its own libvirtd and virtlogd (the test
rig of tests/libvirt, as root) and defines one domain, which takes libvirt 9 tens of
seconds of QEMU probing under TCG. The domain's qcow2 disk starts with the peers
benchmark's data (half compressible, 15% zero blocks). Each tool makes a full backup of
the running domain, then 5% of the disk is rewritten in scattered regions through QEMU's
monitor (HMP ``qemu-io``: the writes go through the running QEMU, so libvirt's
checkpoint bitmaps see them), and each tool makes an incremental backup:
- hyperexport: ``--vm libvirt:DOMAIN`` (pull-mode backup, checkpoints ``hypersdk-*``);
- virtnbdbackup: ``-l full`` then ``-l inc`` (its own checkpoints ``virtnbdbackup.N``),
  stream format, no compression.
Stored bytes are the growth of each output folder; the table gives each time as a
multiple of virtnbdbackup's. virtnbdbackup comes from Debian (`make bench` installs it).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.libvirt.rig import Domain, Libvirtd, why_not

from bench_peers import BenchError, Result, folder_bytes, run, scattered_regions
from imagegen import MIB, make_image, timed

HYPEREXPORT = [sys.executable, "-m", "hypersdk.cli.hyperexport"]
HMP_CHUNK = 64 * 1024  # one qemu-io write per call: keep the HMP line short


def write_regions(dom: Domain, regions: list[tuple[int, int, int]]) -> int:
    """Rewrite each region with a byte pattern through the running QEMU."""
    total = 0
    for offset, length, pattern in regions:
        dom.io(f"write -P {pattern} {offset} {length}")
        total += length
    dom.io("flush")
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    args = ap.parse_args()
    reason = why_not()
    if reason:
        sys.exit(f"bench_libvirt: {reason}")
    if shutil.which("virtnbdbackup") is None:
        sys.exit("bench_libvirt: virtnbdbackup is not installed (make bench installs it)")
    size = args.size_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="hypersdk-lvbench-"))
    os.chmod(work, 0o711)  # QEMU opens virtnbdbackup's scratch files in it
    daemon = Libvirtd()
    try:
        daemon.start()
        raw = work / "seed.raw"
        make_image(raw, size)
        dom = Domain(daemon, size=size)
        image = dom.paths["vda"]
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(image)], "qemu-img")
        raw.unlink()
        dom.start()
        ours = Result("hyperexport")
        peer = Result("virtnbdbackup")
        repo = work / "repo"
        vnb = work / "virtnbdbackup"
        vm = ["--vm", f"libvirt:{dom.name}", "--connect", daemon.uri]
        vnb_cmd = [
            *("virtnbdbackup", "-U", daemon.uri, "-d", dom.name),
            *("-o", str(vnb), "-S", str(work)),
        ]
        rng = random.Random(7)
        regions = [
            (r.offset, len(r.data) // 4096 * 4096, rng.randrange(1, 255))
            for r in scattered_regions(size, 0.05)
        ]

        # virtnbdbackup first: it refuses to start a chain beside checkpoints not its own.
        peer.full_s, _ = timed(run, [*vnb_cmd, "-l", "full"], "virtnbdbackup full")
        peer.full_bytes = folder_bytes(vnb)
        changed = write_regions(dom, regions)
        before = folder_bytes(vnb)
        peer.inc_s, _ = timed(run, [*vnb_cmd, "-l", "inc"], "virtnbdbackup incremental")
        peer.inc_bytes = folder_bytes(vnb) - before
        for cp in dom.dom.listAllCheckpoints(0):
            cp.delete(0)

        run([*HYPEREXPORT, *vm, "--enable-cbt", "--quiet"], "hyperexport --enable-cbt")
        full = [*HYPEREXPORT, *vm, "--output", str(repo), "--quiet"]
        ours.full_s, _ = timed(run, full, "hyperexport full")
        ours.full_bytes = folder_bytes(repo)
        # the same regions again, with other bytes
        write_regions(dom, [(o, n, (p + 1) % 255 + 1) for o, n, p in regions])
        before = folder_bytes(repo)
        ours.inc_s, _ = timed(run, [*full, "--incremental"], "hyperexport incremental")
        ours.inc_bytes = folder_bytes(repo) - before
        print(table([ours, peer], args.size_mib, changed, len(regions)))
        dom.close()
    except BenchError as err:
        sys.exit(f"bench_libvirt: {err}")
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


def table(results: list[Result], mib: int, changed: int, regions: int) -> str:
    ref = results[-1]
    head = (
        f"{'tool':<14} {'full s':>8} {'stored MiB':>10} {'x vnb':>7}   "
        f"{'incr s':>8} {'stored MiB':>10} {'x vnb':>7}"
    )
    lines = [
        f"\n{mib} MiB disk of a running libvirt domain, then {changed / MIB:.1f} MiB "
        f"({100 * changed / (mib * MIB):.1f}%) rewritten in {regions} regions; "
        f"{os.cpu_count()} cores",
        "times are wall seconds; 'x vnb' = time / virtnbdbackup's time",
        head,
        "-" * len(head),
    ]
    for r in results:
        lines.append(
            f"{r.tool:<14} {r.full_s:8.2f} {r.full_bytes / MIB:10.1f} {r.full_s / ref.full_s:6.2f}x"
            f"   {r.inc_s:8.2f} {r.inc_bytes / MIB:10.1f} {r.inc_s / ref.inc_s:6.2f}x"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
