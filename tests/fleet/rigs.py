"""A fleet for tests: a real redis-server on a free loopback port and hyperworker
processes, each started and stopped by its pid (never by name)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from hypersdk.processes import stop_process
from tests.daemon.live import LoggedProcess, free_port
from tests.rigs.qsd import QemuStorageDaemon

START_TIMEOUT = 20.0


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.workdir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            "redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
            "--protected-mode", "yes",
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start: {self.log_path.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, grace=5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Worker(LoggedProcess):
    """One ``hyperworker`` subprocess. The workers of one ``workdir`` share its state
    folder (the export history incrementals start from), as a fleet's workers do."""

    STOP_GRACE = 10.0

    def __init__(
        self, workdir: Path, broker: str, name: str, *args: str, tmpdir: Path | None = None
    ) -> None:
        self.workdir = Path(workdir)
        self.tmpdir = tmpdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = self.workdir / f"{name}.log"
        self.argv = [
            sys.executable, "-m", "hypersdk.fleet.worker", "--broker", broker,
            "--state-dir", str(self.workdir / "state"), "--name", f"{name}@%h", *args,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERSDK_")}
        if self.tmpdir is not None:  # where its QEMU sessions' folders go
            env["TMPDIR"] = str(self.tmpdir)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while " ready." not in self.log():
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"hyperworker did not start: {self.log()[-3000:]}")
            time.sleep(0.05)


class SlowQsd(QemuStorageDaemon):
    """A qemu-storage-daemon whose disk reads are throttled (a throttle filter node
    between the qcow2 node and its file), so that an export takes seconds."""

    def __init__(self, workdir: Path, size: int, bytes_per_second: int) -> None:
        super().__init__(workdir, size)
        self.bps = bytes_per_second

    def _blockdev_args(self, dash: str) -> list[str]:
        node, disk = self.node_name, self.disk_path
        return [
            f"{dash}object", f"throttle-group,id={node}-tg,x-bps-read={self.bps}",
            f"{dash}blockdev",
            f"driver=file,node-name={node}-file,filename={disk},discard=unmap",
            f"{dash}blockdev",
            f"driver=throttle,node-name={node}-slow,throttle-group={node}-tg,file={node}-file",
            f"{dash}blockdev",
            f"driver=qcow2,node-name={node},file={node}-slow,discard=unmap",
        ]  # fmt: skip
