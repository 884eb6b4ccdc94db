"""Fixtures of the vSphere provider tests: the lab binary (built once per session), a
fresh lab per test in its own state folder, and hyperexport/hyperctl run as a user would
(subprocess, GOVC_* environment, private HYPERSDK_STATE_DIR)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hypersdk.lab import VcsimLab, VmSpec
from hypersdk.lab.build import GOVMOMI_SRC, LabBuild, default_source_dir
from hypersdk.providers.connection import VsphereSettings
from hypersdk.providers.vsphere import VsphereProvider, open_vsphere_provider

MiB = 1 << 20
KiB = 1 << 10
PASSWORD = "Pw-7f3a9c1e-not-in-output"
VMS = (
    VmSpec("web", (64 * MiB,)),
    VmSpec("small", (16 * MiB,)),
    VmSpec("two-disks", (16 * MiB, 8 * MiB)),
)


@pytest.fixture(scope="session")
def lab_binary() -> Path:
    if shutil.which("go") is None or not GOVMOMI_SRC.is_dir():
        pytest.fail("needs Debian's golang-go and golang-github-vmware-govmomi-dev (setup.sh)")
    return LabBuild(default_source_dir()).build()


@pytest.fixture()
def lab(lab_binary: Path, tmp_path: Path) -> Iterator[VcsimLab]:
    lab = VcsimLab(tmp_path / "lab")
    lab.start(vms=VMS, password=PASSWORD)
    try:
        yield lab
    finally:
        lab.stop()


def settings_of(lab: VcsimLab, password: str | None = None) -> VsphereSettings:
    s = lab.settings()
    return VsphereSettings(
        server=s.url,
        username=s.username,
        password=s.password if password is None else password,
        insecure=True,
    )


@pytest.fixture()
def provider_for(lab: VcsimLab) -> Iterator[Any]:
    opened: list[VsphereProvider] = []

    def open_(path: str) -> VsphereProvider:
        p = open_vsphere_provider(path, settings_of(lab))
        opened.append(p)
        return p

    yield open_
    for p in opened:
        p.close()


@dataclass
class Cli:
    """hyperexport/hyperctl as subprocesses, connected through GOVC_* variables."""

    tmp: Path
    lab: VcsimLab
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("GOVC_", "HYPERSDK_VSPHERE_"))
        }
        env.update(self.lab.settings().govc_env())
        env["HYPERSDK_STATE_DIR"] = str(self.tmp / "state")
        env.update(self.extra_env)
        return env

    @property
    def repo(self) -> Path:
        return self.tmp / "repo"

    def run(
        self, prog: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", f"hypersdk.cli.{prog}", *args],
            capture_output=True,
            text=True,
            env=env if env is not None else self.env,
            stdin=subprocess.DEVNULL,
            check=False,
            timeout=120,
        )

    def export(self, vm: str, *args: str) -> dict[str, Any]:
        proc = self.run(
            "hyperexport", "--vm", vm, "--output", str(self.repo), "--block-size", "64K",
            "--json", *args,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        doc: dict[str, Any] = json.loads(proc.stdout)
        return doc

    def restore(self, vm_id: str, generation: str, disk: str) -> bytes:
        out = self.tmp / f"restore-{generation}-{disk}.raw"
        proc = self.run(
            "hyperctl", "restore", "--output", str(self.repo), "--vm", vm_id,
            "--generation", generation, "--disk", disk, "--to", str(out), "--force", "--quiet",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        data = out.read_bytes()
        out.unlink()
        return data


@pytest.fixture()
def cli(tmp_path: Path, lab: VcsimLab) -> Cli:
    return Cli(tmp_path, lab)


def flat(lab: VcsimLab, path: str, key: int | None = None) -> bytes:
    """The disk's content as the lab holds it now (no snapshot may exist)."""
    vm = lab.vm(path)
    assert vm.snapshots == 0
    return vm.disk(key).flat_path.read_bytes()
