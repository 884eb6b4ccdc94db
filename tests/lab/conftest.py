"""Fixtures of the vSphere lab tests: the binary (built once per session), a fresh lab
per test in its own state folder, and a pyVmomi connection to it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypersdk.lab import VcsimLab, VmSpec
from hypersdk.lab.build import GOVMOMI_SRC, LabBuild, default_source_dir

# Small disks keep the tests fast; "big" has the real default size of 1 GiB.
VMS = (
    VmSpec("big", (1 << 30,)),
    VmSpec("small", (16 << 20,)),
    VmSpec("two-disks", (32 << 20, 8 << 20)),
)


@pytest.fixture(scope="session")
def lab_binary() -> Path:
    if shutil.which("go") is None or not GOVMOMI_SRC.is_dir():
        # scripts/setup.sh installs them: missing here means the setup is broken.
        pytest.fail("needs Debian's golang-go and golang-github-vmware-govmomi-dev")
    return LabBuild(default_source_dir()).build()


@pytest.fixture()
def lab(lab_binary: Path, tmp_path: Path) -> Iterator[VcsimLab]:
    lab = VcsimLab(tmp_path / "lab")
    lab.start(vms=VMS)
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture()
def si(lab: VcsimLab) -> Iterator[object]:
    from pyVim.connect import Disconnect, SmartConnect

    s = lab.settings()
    conn = SmartConnect(  # type: ignore[no-untyped-call]
        host=s.host, port=s.port, user=s.username, pwd=s.password, disableSslCertValidation=True
    )
    try:
        yield conn
    finally:
        Disconnect(conn)  # type: ignore[no-untyped-call]
