"""hyperctl restore --to EXISTING --since F | --compare: the JSON report, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from tests.chain import BS
from tests.repository.test_damage import hyperctl
from tests.restore.helpers import BLOCKS, make_pair

KEYS = {
    "vm_id", "generation", "since", "mode", "disk", "target", "target_format",
    "capacity_bytes", "block_size", "blocks_total", "blocks_changed", "blocks_zeroed",
    "bytes_read_repository", "bytes_read_target", "bytes_written", "resized_from", "seconds",
}  # fmt: skip


def test_since_json_report(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    target = pair.restore(pair.f, tmp_path / "t.raw")
    proc = hyperctl(
        "restore", "--output", str(pair.repo.root), "--vm", "vm1", "--to", str(target),
        "--since", pair.f.id, "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report) == KEYS
    assert report["generation"] == pair.g.id and report["since"] == pair.f.id
    assert report["mode"] == "since" and report["target_format"] == "raw"
    assert report["bytes_written"] == len(pair.changed) * BS
    assert report["blocks_total"] == BLOCKS and report["capacity_bytes"] == BLOCKS * BS
    assert target.read_bytes() == pair.g_bytes


def test_compare_human_line(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    target = pair.restore(pair.f, tmp_path / "t.raw")
    proc = hyperctl(
        "restore", "--output", str(pair.repo.root), "--vm", "vm1", "--to", str(target),
        "--generation", pair.g.id, "--compare",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"{len(pair.changed)} of {BLOCKS} blocks changed" in proc.stdout
    assert target.read_bytes() == pair.g_bytes


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    target = pair.restore(pair.f, tmp_path / "t.raw")
    small = tmp_path / "small.raw"
    small.write_bytes(bytes(BS))
    base = ["restore", "--output", str(pair.repo.root), "--vm", "vm1"]
    cases = [
        (["--to", str(target), "--since", pair.f.id, "--compare"], "exclude each other"),
        (["--to", str(tmp_path / "nope.raw"), "--since", pair.f.id], "does not exist"),
        (["--to", str(small), "--since", pair.f.id], "does not hold that generation"),
        (["--to", str(target), "--since", "20990101T000000-abcdef"], "20990101T000000-abcdef"),
    ]
    for extra, needle in cases:
        proc = hyperctl(*base, *extra)
        assert proc.returncode == 2, (extra, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (extra, proc.stderr)
    assert not (tmp_path / "nope.raw").exists()
    assert small.read_bytes() == bytes(BS)
    assert target.read_bytes() == pair.f_bytes
