"""Edge cases of the allowed-folder rules (hypersdk.daemon.paths) without a daemon; the
routes are covered against a live daemon in test_access.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hypersdk.daemon.paths import AllowedPaths, ForbiddenPath, has_protocol, read_qcow2_header
from hypersdk.errors import UsageError


def test_a_folder_is_not_a_prefix_of_its_sibling(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "ab").mkdir()
    allowed = AllowedPaths.of([str(tmp_path / "a")])
    assert allowed.output(str(tmp_path / "a" / "repo")) == str(tmp_path / "a" / "repo")
    assert allowed.output(str(tmp_path / "a")) == str(tmp_path / "a")
    for outside in (tmp_path / "ab" / "repo", tmp_path / "a" / ".." / "ab", tmp_path):
        with pytest.raises(ForbiddenPath):
            allowed.output(str(outside))
    with pytest.raises(UsageError):
        allowed.output("relative/repo")
    with pytest.raises(ForbiddenPath):
        allowed.output(str(tmp_path / "a" / "x\x00y"))
    assert AllowedPaths.of(["/"]).output("/anything/at/all") == "/anything/at/all"


def test_restore_targets_and_devices(tmp_path: Path) -> None:
    (tmp_path / "file.raw").write_bytes(b"")
    (tmp_path / "link.raw").symlink_to(tmp_path / "file.raw")
    (tmp_path / "null").symlink_to("/dev/null")
    strict = AllowedPaths.of([str(tmp_path)])
    assert strict.restore_target(str(tmp_path / "new.raw")) == str(tmp_path / "new.raw")
    assert strict.restore_target(str(tmp_path / "file.raw")) == str(tmp_path / "file.raw")
    for target in ("link.raw", "null"):
        with pytest.raises(ForbiddenPath, match="--allow-devices"):
            strict.restore_target(str(tmp_path / target))
    with pytest.raises(UsageError):
        strict.restore_target(str(tmp_path) + "/")
    devices = AllowedPaths.of([str(tmp_path), "/dev"], allow_devices=True)
    # with devices a link is followed (and must stay inside); a character device is never
    # a restore target
    assert devices.restore_target(str(tmp_path / "link.raw")) == str(tmp_path / "file.raw")
    with pytest.raises(ForbiddenPath, match="not a regular file"):
        devices.restore_target(str(tmp_path / "null"))
    with pytest.raises(ForbiddenPath, match="outside"):
        AllowedPaths.of([str(tmp_path)], allow_devices=True).restore_target(str(tmp_path / "null"))


def test_protocol_names() -> None:
    for name in (
        "json:{}",
        "nbd:unix:/x",
        "nbd+unix:///e?socket=/s",
        "http://h/x",
        "file:/x",
        "a:b",
    ):
        assert has_protocol(name), name
    for name in ("/abs/a:b", "rel/a:b", "base.raw", "./x:y"):
        assert not has_protocol(name), name


def test_qcow2_header_reader_agrees_with_qemu_img(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(base), "1M"], check=True)
    top = tmp_path / "top.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw",
         "-o", f"data_file={tmp_path / 'data.raw'}", str(top)],
        check=True,
    )  # fmt: skip
    header = read_qcow2_header(str(top))
    assert header is not None
    assert (header.backing, header.backing_format) == ("base.raw", "raw")
    assert header.data_file == str(tmp_path / "data.raw")
    assert read_qcow2_header(str(base)) is None  # raw
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ForbiddenPath):  # never blocks on a FIFO
        read_qcow2_header(str(tmp_path / "fifo"))
    chain = AllowedPaths.of([str(tmp_path)]).qcow2_chain(str(top))
    assert chain == [str(top), str(tmp_path / "data.raw"), str(base)]
