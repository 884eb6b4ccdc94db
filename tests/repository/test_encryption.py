"""Encrypted repositories end to end: hyperexport into a new repository with a password
makes it encrypted; the right password restores exactly, a wrong one fails in one line;
nothing of the disk, and not the SHA-256 names of its blocks, can be found in any file."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypersdk.cli import hyperctl, hyperexport
from hypersdk.repository.envelope import chunk_id
from tests.export.conftest import Cli
from tests.rigs.qsd import MiB, QemuStorageDaemon

PASSWORD = "correct horse battery staple"


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("HYPERSDK_PASSWORD", PASSWORD)
    monkeypatch.setenv("HYPERSDK_INSECURE_KDF", "1")  # scrypt at ~1 ms: tests only
    return Cli(tmp_path)


@pytest.fixture
def qsd(tmp_path: Path) -> Iterator[QemuStorageDaemon]:
    with QemuStorageDaemon(tmp_path / "qsd", size=16 * MiB) as daemon:
        yield daemon


def pattern() -> bytes:
    """A known block: random, so no compression hides it in a plain repository."""
    return random.Random(1234).randbytes(MiB)


def files_of(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*")) if p.is_file()]


def leaks(root: Path, needles: list[bytes], names: list[str]) -> list[str]:
    """Every file under ``root`` whose bytes hold a needle or whose path holds a name."""
    found = []
    for path in files_of(root):
        blob = path.read_bytes()
        rel = str(path.relative_to(root))
        if any(n in blob for n in needles) or any(n in rel for n in names):
            found.append(rel)
    return found


def disk_now(qsd: QemuStorageDaemon) -> bytes:
    qsd.flush()
    return qsd.read(0, qsd.size)


def test_encrypted_export_restores_exactly_and_leaks_nothing(
    cli: Cli,
    qsd: QemuStorageDaemon,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rng = random.Random(5)
    block = pattern()
    qsd.write(0, rng.randbytes(3 * MiB))
    qsd.write(4 * MiB, block)  # one whole aligned block: a chunk of its own
    assert cli.run("hyperexport", "--vm", qsd.locator, "--enable-cbt").returncode == 0
    full = cli.export(qsd.locator)  # a new repository + HYPERSDK_PASSWORD: encrypted
    config = json.loads((cli.repo / "config").read_text())
    assert config["encryption"] == "aes-256-gcm" and config["version"] == 3
    assert config["hash"] == "keyed-blake3"
    expected = {full["generation"]: disk_now(qsd)}
    qsd.write(8 * MiB + 4096, block[:100_000])  # the pattern again, unaligned
    qsd.write(12 * MiB, rng.randbytes(MiB))
    inc = cli.export(qsd.locator, "--incremental")
    assert inc["mode"] == "incremental", inc["reason"]
    assert inc["bytes_read"] <= 2 * MiB
    expected[inc["generation"]] = disk_now(qsd)

    for gen, data in expected.items():
        assert cli.restore(full["vm"], gen, "disk0") == data
    gens = cli.run("hyperctl", "generations", "--output", str(cli.repo), "--json")
    assert [g["type"] for g in json.loads(gens.stdout)] == ["full", "incremental"]
    verify = cli.run("hyperctl", "verify", "--output", str(cli.repo), "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"], verify.stdout

    # Nothing readable: excerpts of the pattern, its BLAKE3 (a plain repository's chunk
    # name, also inside plain indexes), the VM's locator and id, and the password.
    sha = chunk_id(block, "blake3")
    needles = [block[i : i + 64] for i in range(0, MiB, 64 * 1024)]
    needles += [sha, sha.hex().encode(), PASSWORD.encode(), qsd.locator.encode()]
    assert leaks(cli.repo, needles, [sha.hex(), sha.hex()[:2] + "/" + sha.hex()]) == []
    assert leaks(cli.tmp / "state", [PASSWORD.encode(), *needles[:16]], []) == []

    # The check above finds the pattern where it is stored in the clear.
    plain = cli.tmp / "plain"
    monkeypatch.delenv("HYPERSDK_PASSWORD")
    proc = cli.run("hyperexport", "--vm", qsd.locator, "--output", str(plain), "--json")
    assert proc.returncode == 0, proc.stderr
    assert leaks(plain, needles[:1], [sha.hex()])

    # A wrong password, or none: one line, exit 2, nothing written. (In this process:
    # the entry points' own main, as tests/cli/test_error_table.py runs them.)
    before = {str(p): p.stat().st_mtime_ns for p in files_of(cli.repo)}
    monkeypatch.setenv("HYPERSDK_STATE_DIR", str(cli.tmp / "state"))
    monkeypatch.setattr(logging.getLogger("hypersdk.repository"), "handlers", [])
    for password in ("wrong", None):
        for main, argv in (
            (hyperctl.main, ["restore", "--output", str(cli.repo), "--vm", full["vm"],
                             "--to", str(cli.tmp / "x.raw")]),
            (hyperctl.main, ["generations", "--output", str(cli.repo)]),
            (hyperexport.main, ["--vm", qsd.locator, "--output", str(cli.repo),
                                "--incremental", "--quiet"]),
        ):  # fmt: skip
            monkeypatch.delenv("HYPERSDK_PASSWORD", raising=False)
            if password is not None:
                monkeypatch.setenv("HYPERSDK_PASSWORD", password)
            capsys.readouterr()
            assert main(argv) == 2, (argv, password)
            _, err = capsys.readouterr()
            lines = err.strip().splitlines()
            assert len(lines) == 1 and "password" in lines[0], err
            assert main([*argv, "--json"]) == 2
            assert json.loads(capsys.readouterr().out)["code"] == "password_error"
    assert not (cli.tmp / "x.raw").exists()
    assert {str(p): p.stat().st_mtime_ns for p in files_of(cli.repo)} == before


def test_password_file_and_json_error(
    cli: Cli, qsd: QemuStorageDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    qsd.write(0, random.Random(3).randbytes(MiB))
    monkeypatch.delenv("HYPERSDK_PASSWORD")
    secret = cli.tmp / "pw"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    proc = cli.run(
        "hyperexport", "--vm", qsd.locator, "--output", str(cli.repo),
        "--password-file", str(secret), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    gen = json.loads(proc.stdout)["generation"]
    assert json.loads((cli.repo / "config").read_text())["encryption"] == "aes-256-gcm"
    ok = cli.run(
        "hyperctl", "generations", "--output", str(cli.repo), "--password-file", str(secret),
        "--json",
    )  # fmt: skip
    assert [g["id"] for g in json.loads(ok.stdout)] == [gen]
    secret.write_text("nope\n")
    bad = cli.run(
        "hyperctl", "verify", "--output", str(cli.repo), "--password-file", str(secret),
        "--json",
    )  # fmt: skip
    assert bad.returncode == 2
    assert json.loads(bad.stdout)["code"] == "password_error"
