"""Locators: bad ones are usage errors, missing files not found, unreachable ones
connection failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from hypersdk.errors import ConnectionFailed, NotFoundError, UsageError
from hypersdk.providers.qemu import open_qemu_provider


@pytest.mark.parametrize(
    "locator", ["", "/tmp/x.sock", "vsphere:/dc/vm", "qemu:", "qcow2:", "qemu:/x?foo=1"]
)
def test_bad_locator(locator: str) -> None:
    with pytest.raises(UsageError):
        open_qemu_provider(locator)


def test_missing_socket(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as info:
        open_qemu_provider(f"qemu:{tmp_path / 'nothing.sock'}")
    assert "\n" not in str(info.value)


def test_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(UsageError):
        open_qemu_provider(f"qemu:{path}")


def test_dead_socket(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens
    with pytest.raises(ConnectionFailed) as info:
        open_qemu_provider(f"qemu:{path}")
    assert info.value.__cause__ is not None


def test_missing_image(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        open_qemu_provider(f"qcow2:{tmp_path / 'none.qcow2'}")
