"""hyperexport --vms: several real VMs (qemu-storage-daemon and qcow2 images) in one
command, a few at a time, each failing alone."""

from __future__ import annotations

import io
import json
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hypersdk.cli import hyperctl, hyperexport
from hypersdk.providers.factory import open_provider
from tests.export.conftest import Cli
from tests.rigs.qsd import MiB, QemuStorageDaemon, create_qcow2


def qemu_io(image: Path, command: str) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(image)], check=True, capture_output=True
    )


def enable_cbt(locator: str) -> None:
    provider = open_provider(locator)
    try:
        provider.enable_cbt()
    finally:
        provider.close()


@dataclass
class Fleet:
    """Two qemu-storage-daemons and two qcow2 images with data and CBT on."""

    tmp: Path
    daemons: list[QemuStorageDaemon]
    images: list[Path]

    @property
    def locators(self) -> list[str]:
        return [d.locator for d in self.daemons] + [f"qcow2:{i}" for i in self.images]

    def disk(self, locator: str) -> bytes:
        for d in self.daemons:
            if d.locator == locator:
                d.flush()
                return d.read(0, d.size)
        raw = self.tmp / "reference.raw"
        image = locator.removeprefix("qcow2:")
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, raw], check=True)
        return raw.read_bytes()

    def change(self, rng: random.Random) -> None:
        for n, d in enumerate(self.daemons):
            d.write(n * MiB + 4096, rng.randbytes(200_000))
        for image in self.images:
            qemu_io(image, f"write -P 0x{rng.randrange(1, 255):02x} 2M 64k")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    rng = random.Random(13)
    with (
        QemuStorageDaemon(tmp_path / "qsd-a", size=8 * MiB) as a,
        QemuStorageDaemon(tmp_path / "qsd-b", size=8 * MiB) as b,
    ):
        images = []
        for name in ("web1", "db1"):
            image = tmp_path / "images" / f"{name}.qcow2"
            image.parent.mkdir(exist_ok=True)
            create_qcow2(image, 4 * MiB)
            qemu_io(image, f"write -P 0x{rng.randrange(1, 255):02x} 0 1M")
            images.append(image)
        for d in (a, b):
            d.write(0, rng.randbytes(3 * MiB))
        fleet = Fleet(tmp_path, [a, b], images)
        for locator in fleet.locators:
            enable_cbt(locator)
        yield fleet


def vms_file(tmp: Path, lines: list[str], name: str = "vms.txt") -> Path:
    path = tmp / name
    path.write_text("\n".join(lines) + "\n")
    return path


def run_many(cli: Cli, vms: Path, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    proc = cli.run(
        "hyperexport", "--vms", str(vms), "--output", str(cli.repo), "--json", *args
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def restore(repo: Path, out: Path, vm: str, generation: str, disk: str) -> bytes:
    code = hyperctl.main(
        ["restore", "--output", str(repo), "--vm", vm, "--generation", generation,
         "--disk", disk, "--to", str(out), "--force"]
    )  # fmt: skip
    assert code == 0
    return out.read_bytes()


def max_overlap(docs: list[dict[str, Any]]) -> int:
    """The most exports running at one instant, from their recorded time ranges."""
    edges: list[tuple[datetime, int]] = []
    for d in docs:
        edges.append((datetime.fromisoformat(d["started"]), 1))
        edges.append((datetime.fromisoformat(d["finished"]), -1))
    running = most = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):  # an end before a start
        running += step
        most = max(most, running)
    return most


def test_many_vms_export_at_once_then_incrementally_and_restore(cli: Cli, fleet: Fleet) -> None:
    rng = random.Random(5)
    lines = ["# tonight's VMs", "", *fleet.locators[:2], "   ", *fleet.locators[2:]]
    vms = vms_file(cli.tmp, lines)
    code, docs, _ = run_many(cli, vms, "--concurrency", "2")
    assert code == 0
    assert [d["locator"] for d in docs] == fleet.locators  # file order
    assert all(d["mode"] == "full" and "error" not in d for d in docs)
    # Two at a time, really: two exports ran together, never three.
    assert max_overlap(docs) == 2
    expected = {(d["vm"], d["generation"]): fleet.disk(d["locator"]) for d in docs}

    fleet.change(rng)
    code, incs, _ = run_many(cli, vms, "--concurrency", "2", "--incremental")
    assert code == 0
    assert [d["mode"] for d in incs] == ["incremental"] * 4, [d["reason"] for d in incs]
    assert all(d["bytes_read"] <= MiB for d in incs)
    assert [d["vm"] for d in incs] == [d["vm"] for d in docs]
    expected |= {(d["vm"], d["generation"]): fleet.disk(d["locator"]) for d in incs}

    for (vm, generation), data in expected.items():
        disk = next(d for d in docs if d["vm"] == vm)["disks"][0]["key"]
        assert restore(cli.repo, cli.tmp / "restore.raw", vm, generation, disk) == data


def test_one_bad_vm_fails_alone(cli: Cli, fleet: Fleet) -> None:
    dead = cli.tmp / "dead.sock"  # a socket file nobody listens on any more
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(dead))
    missing = f"qcow2:{cli.tmp / 'gone.qcow2'}"
    lines = [fleet.locators[0], missing, f"qemu:{dead}", fleet.locators[2]]
    code, docs, _ = run_many(cli, vms_file(cli.tmp, lines), "--concurrency", "2")
    assert code == 1
    assert [d["locator"] for d in docs] == lines
    good = [docs[0], docs[3]]
    assert all(d["mode"] == "full" and d["generation"] for d in good)
    assert docs[1]["vm"] == missing and docs[1]["code"] == "not_found"
    assert "gone.qcow2" in docs[1]["error"]
    assert docs[2]["code"] == "connection_failed" and docs[2]["error"]
    # the good ones are really in the repository
    gens = json.loads(
        cli.run("hyperctl", "generations", "--output", str(cli.repo), "--json").stdout
    )
    assert sorted(g["vm"] for g in gens) == sorted(d["vm"] for d in good)


def test_summary_table_without_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HYPERSDK_STATE_DIR", str(tmp_path / "state"))
    images = []
    for name in ("app1", "app2"):
        image = tmp_path / f"{name}.qcow2"
        create_qcow2(image, 2 * MiB)
        qemu_io(image, "write -P 0x11 0 256k")
        images.append(f"qcow2:{image}")
    missing = f"qcow2:{tmp_path / 'nope.qcow2'}"
    vms = vms_file(tmp_path, [*images, missing])
    code = hyperexport.main(["--vms", str(vms), "--output", str(tmp_path / "repo")])
    out, err = capsys.readouterr()
    assert code == 1
    table = out.splitlines()
    for locator in images:
        row = next(line for line in table if locator in line)
        assert "full" in row and "generation" in row
    row = next(line for line in table if missing in line)
    assert "error" in row and "nope.qcow2" in row
    assert f"hyperexport: error: {missing}: " in err
    assert "1 of 3 VMs failed" in err


@pytest.mark.parametrize(
    ("lines", "extra", "message"),
    [
        (["# nothing tonight", ""], [], "names no VM"),
        (["qcow2:{tmp}/a.qcow2", "qcow2:{tmp}/x/../a.qcow2"], [], "line 2"),
        (["qemu:"], [], "line 1: bad QEMU locator"),
        (["qcow2:{tmp}/a.qcow2"], ["--vm", "qcow2:{tmp}/a.qcow2"], "not allowed with"),
        (["qcow2:{tmp}/a.qcow2"], ["--enable-cbt"], "--enable-cbt works on one --vm"),
        (["qcow2:{tmp}/a.qcow2"], ["--incremental-info"], "--incremental-info works on one"),
        (["qcow2:{tmp}/a.qcow2"], ["--concurrency", "0"], "out of range"),
        (["/DC0/vm/web"], [], "cannot tell the platform"),
    ],
)
def test_mistakes_are_refused_before_anything_runs(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    lines: list[str],
    extra: list[str],
    message: str,
) -> None:
    for name in ("HYPERSDK_VSPHERE_URL", "GOVC_URL"):
        monkeypatch.delenv(name, raising=False)
    create_qcow2(tmp_path / "a.qcow2", MiB)
    vms = vms_file(tmp_path, [line.format(tmp=tmp_path) for line in lines])
    repo = tmp_path / "repo"
    argv = ["--vms", str(vms), "--output", str(repo), *[a.format(tmp=tmp_path) for a in extra]]
    try:
        code = hyperexport.main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        code = int(exit_.code or 0)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not repo.exists()


def test_concurrency_goes_with_vms(cli: Cli) -> None:
    proc = cli.run("hyperexport", "--vm", "qcow2:/x.qcow2", "--output", "r", "--concurrency", "2")
    assert proc.returncode == 2 and "--concurrency goes with --vms" in proc.stderr


def test_vms_from_stdin(cli: Cli, tmp_path: Path) -> None:
    image = tmp_path / "s.qcow2"
    create_qcow2(image, MiB)
    proc = subprocess.run(
        [*cli_argv(), "--vms", "-", "--output", str(cli.repo), "--json"],
        input=f"qcow2:{image}\n", capture_output=True, text=True, env=cli.env, check=False,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [d["locator"] for d in json.loads(proc.stdout)] == [f"qcow2:{image}"]


def cli_argv() -> list[str]:
    return [sys.executable, "-m", "hypersdk.cli.hyperexport"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_cancels_every_export_and_commits_nothing_half_way(
    cli: Cli, tmp_path: Path, signum: signal.Signals
) -> None:
    rng = random.Random(3)
    with (
        QemuStorageDaemon(tmp_path / "big-a", size=24 * MiB) as a,
        QemuStorageDaemon(tmp_path / "big-b", size=24 * MiB) as b,
    ):
        for d in (a, b):
            d.write(0, rng.randbytes(24 * MiB))
        image = tmp_path / "last.qcow2"
        create_qcow2(image, MiB)
        lines = [a.locator, b.locator, f"qcow2:{image}"]
        proc = subprocess.Popen(
            [*cli_argv(), "--vms", str(vms_file(tmp_path, lines)), "--output", str(cli.repo),
             "--json", "--concurrency", "2", "--parallel", "1",
             # random data at zstd level 19: seconds per VM, so the signal comes mid-way
             "--compress", "zstd:19"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli.env,
        )  # fmt: skip
        data = cli.repo / "data"
        deadline = time.monotonic() + 30
        while not (data.exists() and any(p.is_file() for p in data.rglob("*"))):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        docs = json.loads(out)
        assert [d["locator"] for d in docs] == lines
        # two stopped between blocks, the third before it started
        assert [d["code"] for d in docs] == ["cancelled"] * 3, docs
        assert "error" in docs[0] and "generation" not in docs[0]
        # Nothing was committed, and nothing is left on QEMU.
        gens = cli.run("hyperctl", "generations", "--output", str(cli.repo), "--json")
        assert json.loads(gens.stdout) == []
        for d in (a, b):
            assert d.export_ids() == {"guest"} and not d.job_ids()


def test_encrypted_repository_is_unlocked_once_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HYPERSDK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HYPERSDK_INSECURE_KDF", "1")
    monkeypatch.setenv("HYPERSDK_PASSWORD", "right")
    images = []
    for name in ("e1", "e2"):
        image = tmp_path / f"{name}.qcow2"
        create_qcow2(image, MiB)
        qemu_io(image, "write -P 0x22 0 128k")
        images.append(f"qcow2:{image}")
    repo = str(tmp_path / "repo")
    assert hyperexport.main(["--vm", images[0], "--output", repo, "--quiet"]) == 0  # encrypted
    vms = str(vms_file(tmp_path, images))

    monkeypatch.setenv("HYPERSDK_PASSWORD", "wrong")
    capsys.readouterr()
    assert hyperexport.main(["--vms", vms, "--output", repo, "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["code"] == "password_error"  # one error

    monkeypatch.setenv("HYPERSDK_PASSWORD", "right")
    assert hyperexport.main(["--vms", vms, "--output", repo, "--json"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert [d["locator"] for d in docs] == images
    assert hyperctl.main(["generations", "--output", repo, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3  # the wrong password made none


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_one_progress_display_for_all_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HYPERSDK_STATE_DIR", str(tmp_path / "state"))
    images = []
    for name in ("p1", "p2", "p3"):
        image = tmp_path / f"{name}.qcow2"
        create_qcow2(image, 2 * MiB)
        qemu_io(image, "write -P 0x33 0 1M")
        images.append(f"qcow2:{image}")
    screen = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", screen)
    vms = str(vms_file(tmp_path, images))
    code = hyperexport.main(
        ["--vms", vms, "--output", str(tmp_path / "repo"), "--block-size", "64K"]
    )
    assert code == 0
    shown = screen.getvalue()
    assert "total: 3 of 3 VMs done" in shown and "3.0/3.0 MiB" in shown
    assert "p1.qcow2 (full)" in shown or "p2.qcow2 (full)" in shown  # a row per export
    assert capsys.readouterr().out.count("generation") == 3
