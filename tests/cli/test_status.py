"""hyperctl status: the last generation of each VM, its age, and exit 1 when stale."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hypersdk.cli.commands.status import age_text
from hypersdk.repository.repository import Repository
from tests.chain import BS, export


def hyperctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hypersdk.cli.hyperctl", *args],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def test_status_flags_the_stale_vm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Repository.open_or_init(tmp_path / "repo", block_size=BS)
    image = tmp_path / "d.raw"
    image.write_bytes(b"x" * BS)
    now = datetime.now(UTC)
    for name, age in (
        ("old", timedelta(days=3)),
        ("old", timedelta(hours=30)),
        ("new", timedelta(hours=2)),
    ):
        monkeypatch.setattr("hypersdk.engine.writer.utc_now", lambda a=age: now - a)
        export(repo, {"d": image}, name=name)
    out = str(repo.root)

    proc = hyperctl("status", "--output", out, "--json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["max_age"] == "1d" and doc["stale"] == 1
    rows = {v["vm"]: v for v in doc["vms"]}
    assert rows["old"]["stale"] and not rows["new"]["stale"]
    assert 30 * 3600 - 60 < rows["old"]["age_s"] < 30 * 3600 + 60  # its newest generation
    assert rows["new"]["generation"] == repo.generations("new")[0].id

    assert hyperctl("status", "--output", out, "--max-age", "2d").returncode == 0
    shown = hyperctl("status", "--output", out)
    assert shown.returncode == 1 and "STALE" in shown.stdout and "1 VM(s)" in shown.stdout
    bad = hyperctl("status", "--output", out, "--max-age", "soon")
    assert bad.returncode == 2 and "duration 'soon'" in bad.stderr
    missing = hyperctl("status", "--output", str(tmp_path / "nope"))
    assert missing.returncode != 0 and "nope" in missing.stderr


def test_age_text() -> None:
    assert [age_text(s) for s in (59, 61, 3600 * 5 + 120, 86400 * 3 + 3600)] == [
        "0m", "1m", "5h 2m", "3d 1h",
    ]  # fmt: skip
