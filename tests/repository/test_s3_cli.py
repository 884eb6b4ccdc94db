"""Every command on an s3:// repository, as a user runs them: hyperexport --output s3://
(an offline qcow2 image, full then incremental), then hyperctl generations, restore,
verify, delete and gc; a missing bucket is one line naming the URL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.rigs.qsd import MiB, create_qcow2
from tests.rigs.s3 import s3_env, s3_server, s3_url

__all__ = ["s3_env", "s3_server", "s3_url"]  # fixtures


def run(tmp: Path, prog: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"hypersdk.cli.{prog}", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HYPERSDK_STATE_DIR": str(tmp / "state")},
        check=False,
        timeout=120,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip().startswith(("{", "[")) else None


def qemu_io(image: Path, command: str) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(image)], check=True, capture_output=True
    )


def test_every_command_on_s3(s3_url: str, tmp_path: Path) -> None:
    image = tmp_path / "web1.qcow2"
    create_qcow2(image, 4 * MiB)
    qemu_io(image, "write -P 0x5a 0 1M")
    vm = f"qcow2:{image}"
    assert run(tmp_path, "hyperexport", "--vm", vm, "--enable-cbt").returncode == 0
    full = ok(run(tmp_path, "hyperexport", "--vm", vm, "--output", s3_url, "--json"))
    qemu_io(image, "write -P 0x6b 3M 64k")
    inc = ok(
        run(tmp_path, "hyperexport", "--vm", vm, "--output", s3_url, "--json", "--incremental")
    )
    assert inc["mode"] == "incremental" and inc["output"] == s3_url, inc

    gens = ok(run(tmp_path, "hyperctl", "generations", "--output", s3_url, "--json"))
    assert [g["type"] for g in gens] == ["full", "incremental"]
    expected = subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(image), str(tmp_path / "ref.raw")], check=True
    )
    assert expected.returncode == 0
    out = tmp_path / "out.raw"
    ok(run(tmp_path, "hyperctl", "restore", "--output", s3_url, "--vm", vm, "--to", str(out)))
    assert out.read_bytes() == (tmp_path / "ref.raw").read_bytes()
    report = ok(run(tmp_path, "hyperctl", "verify", "--output", s3_url, "--json"))
    assert report["ok"] and report["generations"] == 2, report

    gen = gens[1]["id"]  # its new chunk (block 3) is referenced by no other
    ok(run(tmp_path, "hyperctl", "delete", "--output", s3_url, "--vm", vm, "--generation", gen))
    gc = ok(run(tmp_path, "hyperctl", "gc", "--output", s3_url, "--json"))
    assert gc["indexes_removed"] == 1 and gc["chunks_removed"] == 1, gc
    assert len(ok(run(tmp_path, "hyperctl", "generations", "--output", s3_url, "--json"))) == 1
    assert full["vm"] == gens[0]["vm"]


def test_a_missing_bucket_is_one_line(s3_url: str, tmp_path: Path) -> None:
    for args in (["generations"], ["verify"], ["gc"]):
        proc = run(tmp_path, "hyperctl", *args, "--output", "s3://no-such-bucket-x/r")
        assert proc.returncode != 0
        assert "s3://no-such-bucket-x/r" in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
