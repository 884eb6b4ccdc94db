"""A repository of raw-image exports under chosen identities (no hypervisor involved):
two VMs that share a name, one exported from a qcow2 locator, one from a vSphere path."""

from __future__ import annotations

import os
from pathlib import Path

from hypersdk.engine.writer import GenerationWriter
from hypersdk.providers.base import FrozenDisk, VmIdentity
from hypersdk.providers.raw import RawImageReader
from hypersdk.repository.manifest import Manifest
from hypersdk.repository.repository import Repository
from tests.chain import BS


def export_as(repo: Repository, vm: VmIdentity, image: Path) -> Manifest:
    reader = RawImageReader(image)
    try:
        disk = FrozenDisk("disk-0", os.path.getsize(image), "c-0", None, reader)
        with GenerationWriter(repo, vm) as w:
            return w.write([disk], parent=None, reason="test").manifest
    finally:
        reader.close()


def named_repo(tmp: Path) -> Repository:
    """``vm-a`` and ``vm-b`` both named ``twin``; ``qcow2-…`` exported from
    ``qcow2:<tmp>/img/solo.qcow2``; ``uuid-w`` named ``web`` from ``/DC0/vm/web``."""
    repo = Repository.open_or_init(tmp / "repo", block_size=BS)
    image = tmp / "a.raw"
    image.write_bytes(os.urandom(2 * BS))
    export_as(repo, VmIdentity("vm-a", "twin", "raw", "raw:a"), image)
    export_as(repo, VmIdentity("vm-b", "twin", "raw", "raw:b"), image)
    export_as(repo, VmIdentity("uuid-w", "web", "vsphere", "DC0/vm/web"), image)
    export_as(repo, VmIdentity("qcow2-0123", "solo", "qemu", f"qcow2:{tmp}/img/solo.qcow2"), image)
    return repo
