from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.rigs.qsd import MiB, QemuStorageDaemon


@dataclass
class Cli:
    """Runs hyperexport/hyperctl as a user would, with a private state folder."""

    tmp: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "HYPERSDK_STATE_DIR": str(self.tmp / "state")}

    @property
    def repo(self) -> Path:
        return self.tmp / "repo"

    def run(self, prog: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", f"hypersdk.cli.{prog}", *args],
            capture_output=True, text=True, env=self.env, check=False, timeout=120,
        )  # fmt: skip

    def export(self, vm: str, *args: str) -> dict[str, Any]:
        proc = self.run("hyperexport", "--vm", vm, "--output", str(self.repo), "--json", *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        doc: dict[str, Any] = json.loads(proc.stdout)
        return doc

    def restore(self, vm_id: str, generation: str, disk: str) -> bytes:
        out = self.tmp / f"restore-{generation}.raw"
        proc = self.run(
            "hyperctl",
            "restore",
            "--output",
            str(self.repo),
            "--vm",
            vm_id,
            "--generation",
            generation,
            "--disk",
            disk,
            "--to",
            str(out),
            "--force",
        )
        assert proc.returncode == 0, proc.stderr
        data = out.read_bytes()
        out.unlink()
        return data


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def qsd(tmp_path: Path) -> Iterator[QemuStorageDaemon]:
    with QemuStorageDaemon(tmp_path / "qsd", size=32 * MiB) as daemon:
        yield daemon
