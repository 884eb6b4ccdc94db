"""Helpers for the NBD tests: real servers (qemu-nbd, nbdkit) started per test in
tmp_path and stopped by their pid, and reference output from nbdinfo."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hypersdk.processes import stop_process

STARTUP_TIMEOUT = 10.0


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed (scripts/setup.sh installs it)")


def _wait_ready(proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}: {err}")
        if ready():
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not start within {STARTUP_TIMEOUT} s")


def _unix_ready(path: Path) -> Callable[[], bool]:
    def ready() -> bool:
        if not path.exists():
            return False
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(path))
            except OSError:
                return False
        return True

    return ready


def _tcp_ready(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    return ready


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop one server by its pid: SIGTERM, then SIGKILL."""
    stop_process(proc, grace=5)
    if proc.stderr:
        proc.stderr.close()


class Servers:
    """Starts servers for one test and stops them all at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []
        self._n = 0

    def _sock(self) -> Path:
        self._n += 1
        return self.tmp_path / f"nbd{self._n}.sock"

    def _spawn(self, argv: list[str], ready_check: Callable[[], bool]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.procs.append(proc)
        _wait_ready(proc, ready_check, argv[0])
        return proc

    def qemu_nbd(
        self,
        image: Path,
        fmt: str,
        *,
        read_only: bool = True,
        bitmap: str | None = None,
        export_name: str | None = None,
    ) -> str:
        _need("qemu-nbd")
        sock = self._sock()
        argv = ["qemu-nbd", f"--socket={sock}", "-f", fmt, "--persistent", "--shared=8"]
        if read_only:
            argv.append("--read-only")
        if bitmap:
            argv += ["-B", bitmap]
        if export_name is not None:
            argv += ["-x", export_name]
        argv.append(str(image))
        self._spawn(argv, _unix_ready(sock))
        return str(sock)

    def nbdkit(self, *args: str, filters: tuple[str, ...] = ()) -> tuple[str, int]:
        """Start nbdkit on a unix socket; return (socket path, pid)."""
        _need("nbdkit")
        sock = self._sock()
        argv = ["nbdkit", "--foreground", "--exit-with-parent", "--unix", str(sock)]
        argv += [f"--filter={f}" for f in filters]
        proc = self._spawn([*argv, *args], _unix_ready(sock))
        return str(sock), proc.pid

    def nbdkit_tcp(self, *args: str) -> int:
        _need("nbdkit")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        argv = ["nbdkit", "--foreground", "--exit-with-parent", "--ipaddr", "127.0.0.1"]
        self._spawn([*argv, "--port", str(port), *args], _tcp_ready(port))
        return port

    def kill(self, pid: int) -> None:
        for proc in self.procs:
            if proc.pid == pid:
                os.kill(pid, signal.SIGKILL)
                proc.wait(timeout=5)

    def stop_all(self) -> None:
        for proc in self.procs:
            stop(proc)


def run(*argv: str) -> bytes:
    """Run a tool, fail the test with its stderr if it fails."""
    done = subprocess.run(argv, capture_output=True, timeout=60)
    if done.returncode:
        raise AssertionError(f"{argv[0]} failed: {done.stderr.decode()}")
    return done.stdout


def merge(extents: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Join adjacent (offset, length, flags) extents with equal flags."""
    out: list[tuple[int, int, int]] = []
    for offset, length, flags in extents:
        if out and out[-1][2] == flags and out[-1][0] + out[-1][1] == offset:
            out[-1] = (out[-1][0], out[-1][1] + length, flags)
        else:
            out.append((offset, length, flags))
    return out


def nbdinfo_map(sock: str, context: str = "base:allocation") -> list[tuple[int, int, int]]:
    """Extents as nbdinfo (libnbd, the reference client) reports them, merged."""
    _need("nbdinfo")
    out = run("nbdinfo", f"--map={context}", f"nbd+unix:///?socket={sock}")
    extents = []
    for line in out.decode().splitlines():
        offset, length, flags = line.split()[:3]
        extents.append((int(offset), int(length), int(flags)))
    return merge(extents)
