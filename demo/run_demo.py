"""`make demo`: incremental export of a vSphere VM on the built-in lab, end to end.

Starts the lab (a simulated vCenter with changed block tracking), enables CBT on a VM,
writes data into its disk, makes a full export, changes about 5% of the blocks, shows
`--incremental-info`, makes an incremental export, restores both generations, compares
their checksums with the lab's disk file at each point and prints what was measured.
Everything runs through the real command lines (`hyperexport`, `hyperctl`) in a temp
folder that is removed at the end (`--keep` keeps it). The lab is stopped by its pid.
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
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from hypersdk.cli.output import human_bytes
from hypersdk.lab.vcsim import VcsimLab, VmSpec
from imagegen import MIB, block_data, sha256_file

console = Console()
VM = "/DC0/vm/demo-vm"


class Demo:
    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work = work
        self.env = env
        self.repo = work / "repo"

    def run(self, prog: str, *args: str, show: bool = False) -> str:
        cmd = [sys.executable, "-m", f"hypersdk.cli.{prog}", *args]
        console.print(f"[dim]$ {prog} {' '.join(args)}[/]")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{prog} failed ({proc.returncode}): {proc.stderr.strip()}")
        if show:
            console.print(proc.stdout.rstrip(), highlight=False, markup=False)
        return proc.stdout

    def export(self, *args: str) -> dict[str, Any]:
        out = json.loads(self.run("hyperexport", "--vm", VM, "--output", str(self.repo),
                                  "--json", *args))  # fmt: skip
        console.print(f"   {out['mode']}: {out['reason']}")
        return out


def fill(lab: VcsimLab, size: int, fraction: float, seed: int) -> int:
    """Write ``fraction`` of the disk's 1 MiB blocks with mixed data; returns the count."""
    rng = random.Random(seed)
    blocks = rng.sample(range(size // MIB), int(size // MIB * fraction))
    for b in sorted(blocks):
        data = block_data(rng, MIB)
        lab.write(VM, b * MIB, data if any(data) else bytes(MIB))
    return len(blocks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=1024, help="the VM's disk size")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    size = args.size_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="hypersdk-demo-"))
    lab = VcsimLab(work / "lab")
    try:
        console.print("[bold]1.[/] building and starting the vSphere lab")
        settings = lab.start(vms=[VmSpec("demo-vm", (size,))])
        env = {**os.environ, **settings.govc_env(), "HYPERSDK_STATE_DIR": str(work / "state")}
        demo = Demo(work, env)
        console.print(f"   vCenter simulator at {settings.url} (pid {settings.pid})")

        console.print("[bold]2.[/] enabling CBT and writing data into the VM's disk")
        demo.run("hyperexport", "--vm", VM, "--enable-cbt", show=True)
        written = fill(lab, size, 0.5, seed=1)
        console.print(f"   wrote {written} MiB")

        console.print("[bold]3.[/] full export")
        full = demo.export()
        flat = lab.vm(VM).disk().flat_path
        sums = {full["generation"]: sha256_file(flat)}

        console.print("[bold]4.[/] changing about 5% of the blocks")
        changed = fill(lab, size, 0.05, seed=2)
        console.print(f"   rewrote {changed} blocks of 1 MiB")

        console.print("[bold]5.[/] what an incremental export would do now")
        demo.run("hyperexport", "--vm", VM, "--output", str(demo.repo), "--incremental-info",
                 show=True)  # fmt: skip

        console.print("[bold]6.[/] incremental export")
        inc = demo.export("--incremental")
        sums[inc["generation"]] = sha256_file(flat)

        console.print("[bold]7.[/] restoring both generations and comparing checksums")
        ok = True
        for gen in (full, inc):
            out = work / f"{gen['generation']}.raw"
            # The VM is named by the path it was exported from, as a user would.
            demo.run("hyperctl", "restore", "--output", str(demo.repo), "--vm", VM,
                     "--generation", gen["generation"], "--to", str(out), "--quiet")  # fmt: skip
            got = sha256_file(out)
            match = got == sums[gen["generation"]]
            ok &= match
            console.print(
                f"   {gen['mode']:<11} {gen['generation']}  sha256 {got[:16]}…  "
                + ("[green]matches the lab's disk file[/]" if match else "[red]DIFFERS[/]")
            )
            out.unlink()
        demo.run("hyperctl", "generations", "--output", str(demo.repo), "--vm", VM, show=True)
        demo.run("hyperctl", "verify", "--output", str(demo.repo), "--vm", VM, show=True)
        table(size, full, inc)
        return 0 if ok else 1
    finally:
        lab.stop()
        console.print(f"lab stopped; {'kept ' + str(work) if args.keep else 'cleaned up'}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def table(size: int, full: dict[str, Any], inc: dict[str, Any]) -> None:
    t = Table(title=f"Performance Comparison, measured on this run ({human_bytes(size)} VM)")
    for col in ("Export Type", "Duration", "Data Transfer", "Storage", "Bandwidth"):
        t.add_column(col, justify="left" if col == "Export Type" else "right")
    for name, r in (("Full", full), ("Incremental", inc)):
        t.add_row(
            name,
            f"{r['duration_s']:.2f} s",
            human_bytes(r["bytes_read"]),
            human_bytes(r["bytes_stored"]),
            f"{r['throughput_mib_s']:.0f} MiB/s",
        )
    pct = lambda a, b: f"{100 * (1 - a / b):.0f}%" if b else "-"  # noqa: E731
    t.add_row(
        "[bold]Savings[/]",
        pct(inc["duration_s"], full["duration_s"]),
        pct(inc["bytes_read"], full["bytes_read"]),
        pct(inc["bytes_stored"], full["bytes_stored"]),
        "N/A",
    )
    console.print(t)


if __name__ == "__main__":
    sys.exit(main())
