"""hyperctl serve (a real process stopped by signals) and the qcow2/vmdk restores that
read the served generation instead of a raw temp file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import pytest

from hypersdk.access.image import restore_image
from hypersdk.errors import ExportCancelled
from hypersdk.nbd import NbdClient
from tests.access.conftest import SIZE, Served


def _serve(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hypersdk.cli.hyperctl", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _first_json(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("}"):
            break
    doc: dict[str, object] = json.loads("".join(lines))
    return doc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_a_socket_until_a_signal(served_repo: Served, sig: signal.Signals) -> None:
    s = served_repo
    sock = s.tmp / "serve.sock"
    proc = _serve("--output", str(s.repo.root), "--vm", "vm1", "--generation", s.first.id,
                  "--socket", str(sock), "--json")  # fmt: skip
    try:
        doc = _first_json(proc)
        assert doc == {
            "uri": f"nbd+unix:///?socket={sock}",
            "vm": "vm1",
            "generation": s.first.id,
            "disk": "disk-0",
            "size": SIZE,
            "writable": False,
        }
        out = s.tmp / "copy.raw"
        subprocess.run(["nbdcopy", str(doc["uri"]), str(out)], check=True, timeout=30)
        assert out.read_bytes() == s.images[s.first.id].read_bytes()
        idle = NbdClient.connect(f"unix:{sock}")  # a client still connected at the stop
        assert idle.pread(0, 512) == out.read_bytes()[:512]
        proc.send_signal(sig)
        assert proc.wait(10) == 0
        idle.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not sock.exists()


def test_serve_a_loopback_port_writable(served_repo: Served) -> None:
    s = served_repo
    proc = _serve("--output", str(s.repo.root), "--vm", "vm1", "--port", "0", "--writable")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        uri = line.rsplit(" at ", 1)[1].strip()
        assert uri.startswith("nbd://127.0.0.1:") and "read-write" in line
        io = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 7 0 4096", uri],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
        assert io.returncode == 0, io.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--vm", "nope", "--port", "0"], "no VM 'nope'"),
        (["--vm", "vm1", "--generation", "20990101T000000-000000", "--port", "0"], "20990101"),
        (["--vm", "vm1", "--disk", "disk-9", "--port", "0"], "no disk 'disk-9'"),
        (["--vm", "vm1", "--socket", "EXISTS"], "exists"),
        (["--vm", "vm1"], "one of the arguments --socket --port is required"),
        (["--vm", "vm1", "--port", "70000"], "out of range"),
    ],
)
def test_serve_mistakes_are_one_line(served_repo: Served, args: list[str], message: str) -> None:
    s = served_repo
    taken = s.tmp / "taken"
    taken.write_text("keep me")
    args = [str(taken) if a == "EXISTS" else a for a in args]
    proc = _serve("--output", str(s.repo.root), *args)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert taken.read_text() == "keep me"


@pytest.mark.parametrize("fmt", ["qcow2", "vmdk"])
def test_qcow2_and_vmdk_restores_equal_the_raw_restore_and_are_sparse(
    served_repo: Served, fmt: str
) -> None:
    s = served_repo
    out = s.tmp / f"out.{fmt}"
    proc = subprocess.run(
        [sys.executable, "-m", "hypersdk.cli.hyperctl", "restore", "--output",
         str(s.repo.root), "--vm", "vm1", "--to", str(out), "--format", fmt, "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["format"] == fmt and result["capacity_bytes"] == SIZE
    assert result["bytes_written"] < SIZE // 2  # only the data was read and written
    raw = s.images[s.second.id]
    cmp = subprocess.run(["qemu-img", "compare", "-F", fmt, "-f", "raw", str(raw), str(out)],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", str(out)]))
    assert info["format"] == fmt
    assert out.stat().st_blocks * 512 < SIZE // 2  # sparse: the zero blocks take no space
    assert (out.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in s.tmp.iterdir() if ".restore-" in p.name] == []


def test_a_qcow2_restore_of_a_damaged_generation_leaves_nothing(served_repo: Served) -> None:
    s = served_repo
    index = s.repo.load_index(s.second, "disk-0")
    _, cid = next(iter(index.chunks()))
    path = s.repo.layout.chunk(cid)
    path.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 1]))
    out = s.tmp / "out.qcow2"
    proc = subprocess.run(
        [sys.executable, "-m", "hypersdk.cli.hyperctl", "restore", "--output",
         str(s.repo.root), "--vm", "vm1", "--to", str(out), "--format", "qcow2"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and "qemu-img convert to qcow2" in proc.stderr, proc.stderr
    assert not out.exists()
    assert [p.name for p in s.tmp.iterdir() if ".restore-" in p.name] == []


def test_a_cancelled_qcow2_restore_stops_qemu_img_and_leaves_nothing(served_repo: Served) -> None:
    s = served_repo
    cancel = threading.Event()
    out = s.tmp / "out.qcow2"
    with pytest.raises(ExportCancelled):
        restore_image(
            s.repo, s.second, "disk-0", out, fmt="qcow2", progress=lambda _: cancel.set(),
            cancel=cancel,
        )  # fmt: skip
    assert not out.exists()
    assert [p.name for p in s.tmp.iterdir() if ".restore-" in p.name] == []
