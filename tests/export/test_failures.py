"""Failures, interruptions and bad input: nothing committed, nothing left behind, one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hypersdk.engine.export import ExportHooks, ExportRequest, run_export
from hypersdk.errors import ExportCancelled
from hypersdk.providers.factory import open_provider
from hypersdk.state.history import History
from tests.export.conftest import Cli
from tests.rigs.qsd import MiB, QemuStorageDaemon, QemuVm


def leftovers(qsd: QemuStorageDaemon) -> tuple[set[str], set[str], set[str], set[str]]:
    bitmaps = set(qsd.bitmaps("disk0"))
    return qsd.node_names(), qsd.export_ids(), qsd.job_ids(), bitmaps


def test_failure_midway_commits_nothing_and_cleans_up(cli: Cli, qsd: QemuStorageDaemon) -> None:
    qsd.write(0, os.urandom(16 * MiB))
    assert cli.run("hyperexport", "--vm", qsd.locator, "--enable-cbt").returncode == 0
    full = cli.export(qsd.locator)
    qsd.write(0, os.urandom(12 * MiB))
    expected = qsd.read(0, qsd.size)
    before = leftovers(qsd)
    record = (cli.tmp / "state/incremental" / full["vm"] / "latest.json").resolve()

    provider = open_provider(qsd.locator)
    cancel = threading.Event()
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        if done[0] >= 4 * MiB:
            cancel.set()  # like DELETE /exports/{id} or Ctrl-C in the middle of the copy

    request = ExportRequest(output=str(cli.repo), incremental=True, parallel=2)
    hooks = ExportHooks(progress=progress, cancel=cancel)
    with pytest.raises(ExportCancelled):
        run_export(provider, request, History(cli.tmp / "state"), hooks)
    provider.close()

    assert leftovers(qsd) == before  # no fleecing node, export, job or new checkpoint
    gens = json.loads(
        cli.run("hyperctl", "generations", "--output", str(cli.repo), "--json").stdout
    )
    assert [g["id"] for g in gens] == [full["generation"]]
    assert (cli.tmp / "state/incremental" / full["vm"] / "latest.json").resolve() == record
    # the old checkpoint still covers everything: the next incremental is complete
    nxt = cli.export(qsd.locator, "--incremental")
    assert nxt["mode"] == "incremental" and nxt["bytes_read"] == 12 * MiB
    assert cli.restore(full["vm"], nxt["generation"], "disk0") == expected


def test_sigint_mid_export(cli: Cli, tmp_path: Path) -> None:
    """Ctrl-C: exit 130, one line, no generation, no QEMU leftovers."""
    with QemuStorageDaemon(tmp_path / "big", size=384 * MiB) as qsd:
        _interrupt(cli, qsd)


def _interrupt(cli: Cli, qsd: QemuStorageDaemon) -> None:
    for off in range(0, 384 * MiB, 32 * MiB):
        qsd.write(off, os.urandom(32 * MiB))
    assert cli.run("hyperexport", "--vm", qsd.locator, "--enable-cbt").returncode == 0
    before = leftovers(qsd)
    env = cli.env
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypersdk.cli.hyperexport", "--vm", qsd.locator,
         "--output", str(cli.repo), "--parallel", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    data = cli.repo / "data"
    while not (data.exists() and any(data.iterdir())):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "hyperexport: error: interrupted; nothing was committed"
    assert "Traceback" not in err
    assert leftovers(qsd) == before
    assert not list((cli.repo / "vms").glob("*/generations/*.json"))


@pytest.mark.parametrize(
    "vm, output, code, words",
    [
        ("qemu:{tmp}/nothing.sock", "{tmp}/repo", 2, "nothing.sock"),  # not found
        ("qcow2:{tmp}/missing.qcow2", "{tmp}/repo", 2, "missing.qcow2"),
        ("vmware-or-what", "{tmp}/repo", 2, "cannot tell the platform"),
        ("qemu:{qmp}", None, 2, "needs --output"),
        ("qemu:{qmp}", "{tmp}/not-empty", 2, "not empty and is not a repository"),
        ("qemu:{qmp}", "/proc/hypersdk-repo", 1, "cannot create repository"),
    ],
)
def test_bad_input_gives_one_line(
    cli: Cli, qsd: QemuStorageDaemon, vm: str, output: str | None, code: int, words: str
) -> None:
    (cli.tmp / "not-empty").mkdir()
    (cli.tmp / "not-empty" / "precious.txt").write_text("keep me")
    fmt = {"tmp": cli.tmp, "qmp": f"{qsd.qmp_path}?nbd={qsd.nbd_path}"}
    args = ["--vm", vm.format(**fmt)]
    if output:
        args += ["--output", output.format(**fmt)]
    before = leftovers(qsd)
    for extra in ([], ["--json"]):
        proc = cli.run("hyperexport", *args, *extra)
        assert proc.returncode == code, proc.stderr
        if extra:
            assert words in json.loads(proc.stdout)["error"]
        else:
            assert proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert (cli.tmp / "not-empty" / "precious.txt").read_text() == "keep me"
    assert leftovers(qsd) == before
    assert not (cli.tmp / "repo").exists()


def test_read_only_output_folder(cli: Cli, qsd: QemuStorageDaemon, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        os.chmod(ro, 0o555)
        if os.geteuid() == 0:
            pytest.skip("cannot mount a read-only tmpfs here, and root ignores mode bits")
    try:
        assert cli.run("hyperexport", "--vm", qsd.locator, "--enable-cbt").returncode == 0
        before = leftovers(qsd)
        proc = cli.run("hyperexport", "--vm", qsd.locator, "--output", str(ro / "repo"))
        assert proc.returncode == 1
        assert "cannot create repository" in proc.stderr and "Read-only" in proc.stderr
        assert proc.stderr.count("\n") == 1
        assert leftovers(qsd) == before
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", str(ro)], check=False)


def test_incremental_info_without_output(cli: Cli, qsd: QemuStorageDaemon) -> None:
    assert cli.run("hyperexport", "--vm", qsd.locator, "--enable-cbt").returncode == 0
    cli.export(qsd.locator)
    qsd.write(0, os.urandom(3 * MiB))
    info = cli.run("hyperexport", "--vm", qsd.locator, "--incremental-info")
    assert info.returncode == 0, info.stderr
    lines = info.stdout.splitlines()
    assert lines[0] == "=== Incremental Export Analysis ==="
    assert "Changed Block Tracking (CBT): Enabled" in lines
    assert "Current Disks: 1" in lines
    assert "  • disk0 (32 MB) - qcow2" in info.stdout
    assert "  ✓ Incremental export is possible" in lines
    assert "  Estimated changed data: 3 MB" in lines  # QEMU counts exactly
    assert "  Potential savings: 29 MB (90.6%)" in lines
    doc = json.loads(
        cli.run("hyperexport", "--vm", qsd.locator, "--incremental-info", "--json").stdout
    )
    assert doc["can_incremental"] is True and doc["estimated_changed_bytes"] == 3 * MiB
    assert doc["estimate_exact"] is True
    assert doc["estimated_savings_bytes"] == 29 * MiB


def test_real_vm_process(cli: Cli, tmp_path: Path) -> None:
    """qemu-system-x86_64 (KVM if present, else TCG) backed up through its own QMP socket."""
    with QemuVm(tmp_path / "vm", size=32 * MiB) as vm:
        vm.io("write -P 0xab 0 4M")
        assert cli.run("hyperexport", "--vm", vm.locator, "--enable-cbt").returncode == 0
        full = cli.export(vm.locator)
        vm.io("write -P 0xcd 8M 1M")
        inc = cli.export(vm.locator, "--incremental")
        assert inc["mode"] == "incremental" and inc["bytes_read"] == 1 * MiB
        disk = inc["disks"][0]["key"]
        data = cli.restore(inc["vm"], inc["generation"], disk)
        assert data[: 4 * MiB] == b"\xab" * 4 * MiB
        assert data[8 * MiB : 9 * MiB] == b"\xcd" * MiB
        assert data[9 * MiB :] == bytes(23 * MiB)
        assert cli.restore(full["vm"], full["generation"], disk)[8 * MiB : 9 * MiB] == bytes(MiB)


def test_compress_applies_to_new_chunks_of_an_existing_repository(
    cli: Cli, qsd: QemuStorageDaemon
) -> None:
    from hypersdk.repository.envelope import Compression
    from hypersdk.repository.repository import Repository

    qsd.write(0, b"compressible text " * 100_000)
    full = cli.export(qsd.locator)  # a new repository: zstd by default
    qsd.write(4 * MiB, b"more compressible text " * 50_000)
    expected = qsd.read(0, qsd.size)
    again = cli.export(qsd.locator, "--compress", "lz4")
    repo = Repository.open(cli.repo)
    assert repo.config.compression == "zstd"  # the repository's default is unchanged
    methods = {p.read_bytes()[5] for _, p in repo.chunks.all()}
    assert methods == {Compression.ZSTD, Compression.LZ4}
    assert cli.restore(full["vm"], again["generation"], "disk0") == expected
    for bad in ("zstd:99", "lz4:3", "gzip"):
        proc = cli.run("hyperexport", "--vm", qsd.locator, "--output", str(cli.repo),
                       "--compress", bad)  # fmt: skip
        # each one refused the same way: exit 2, one line naming the value, no traceback
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and f"'{bad}'" in proc.stderr, proc.stderr


def test_block_size_only_for_a_new_repository(cli: Cli, qsd: QemuStorageDaemon) -> None:
    qsd.write(0, os.urandom(MiB))
    first = cli.export(qsd.locator, "--block-size", "256K")
    assert first["bytes_read"] == MiB
    proc = cli.run("hyperexport", "--vm", qsd.locator, "--output", str(cli.repo),
                   "--block-size", "1M")  # fmt: skip
    assert proc.returncode == 2
    assert "262144-byte blocks" in proc.stderr and proc.stderr.count("\n") == 1
    assert cli.export(qsd.locator, "--block-size", "256K")["mode"] == "full"
    bad = cli.run("hyperexport", "--vm", qsd.locator, "--output", str(cli.tmp / "new"),
                  "--block-size", "3M")  # fmt: skip
    assert bad.returncode == 2 and "power of two" in bad.stderr
