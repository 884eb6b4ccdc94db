"""The daemon takes libvirt locators; a connection URI naming a unix socket must name
one inside the allowed folders (a token holder must not make the daemon talk to any
socket of the host)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hypersdk.daemon.paths import AllowedPaths, ForbiddenPath


def test_libvirt_locators_and_their_sockets(tmp_path: Path) -> None:
    allowed = AllowedPaths.of([str(tmp_path)])
    allowed.vm_path("libvirt:web1")  # the daemon's own connection
    allowed.vm_path("libvirt:web1?connect=qemu:///system")
    allowed.vm_path(f"libvirt:web1?connect=qemu:///system?socket={tmp_path}/libvirt-sock")
    with pytest.raises(ForbiddenPath):
        allowed.vm_path("libvirt:web1?connect=qemu:///system?socket=/run/other.sock")
