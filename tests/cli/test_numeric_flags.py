"""Every numeric flag is range-checked while parsing: a usage error (exit 2) in one line,
never a traceback, and nothing created."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from hypersdk.cli.numbers import float_in, int_in, parse_size, size_in

BAD_EXPORT_FLAGS = [
    ("--block-size", "1E400M"),
    ("--block-size", "nan"),
    ("--block-size", "-1M"),
    ("--block-size", "0.5"),
    ("--block-size", "32G"),
    ("--block-size", "96K"),  # in range, not a power of two
    ("--parallel", "0"),
    ("--parallel", "1e3"),
    ("--parallel", "99999999999999999999999"),
    ("--max-incremental-age", "nan"),
    ("--max-incremental-age", "inf"),
    ("--max-incremental-age", "-1"),
    ("--max-incremental-age", "0"),
    ("--max-incremental-age", "1e12"),
]


def run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = "import sys; from hypersdk.cli.hyperexport import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=cwd, timeout=60
    )


@pytest.mark.parametrize(("flag", "value"), BAD_EXPORT_FLAGS)
def test_hyperexport_refuses_bad_number(tmp_path: Path, flag: str, value: str) -> None:
    image = tmp_path / "disk.qcow2"
    repo = tmp_path / "repo"
    proc = run("--vm", f"qcow2:{image}", "--output", str(repo), f"{flag}={value}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert flag in lines[0] or "block size" in lines[0], lines[0]
    assert not repo.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["lab", "start", "--port", "70000"],
        ["lab", "start", "--block-size", "1E400M"],
        ["lab", "write", "--vm", "/x", "--offset", "nan", "--length", "1M"],
        ["lab", "write", "--vm", "/x", "--offset", "0", "--length", "-1"],
        ["lab", "config", "--max-changed-areas", "-5"],
        ["lab", "config", "--max-epochs", "1"],
    ],
)
def test_hyperctl_lab_refuses_bad_number(tmp_path: Path, argv: list[str]) -> None:
    code = "import sys; from hypersdk.cli.hyperctl import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv, "--state-dir", str(tmp_path / "lab")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "lab").exists()


def test_sizes() -> None:
    assert parse_size("4096") == 4096
    assert parse_size("64K") == 65536
    assert parse_size("64kib") == 65536
    assert parse_size("1.5M") == 3 << 19
    assert parse_size(" 1G ") == 1 << 30
    for bad in ("", "1E3", "nan", "inf", "-1", "1.1", "0x10", "1 P", "12345678901234567890123K"):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="from 64K to 16M"):
        size_in(64 << 10, 16 << 20)("32M")


def test_ranges() -> None:
    assert int_in(1, 64)("64") == 64
    with pytest.raises(argparse.ArgumentTypeError):
        int_in(1, 64)("65")
    with pytest.raises(argparse.ArgumentTypeError):
        int_in(1, 64)("4.0")
    days = float_in(0, 100, low_open=True)
    assert days("0.5") == 0.5
    for bad in ("0", "nan", "-inf", "inf", "101", "seven"):
        with pytest.raises(argparse.ArgumentTypeError):
            days(bad)
