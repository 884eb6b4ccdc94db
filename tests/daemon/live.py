"""A live hypervisord for tests: a subprocess on a free loopback port with its own state
folder, stopped by its pid (SIGTERM, then SIGKILL), never by name.

Without ``token`` the daemon makes its own in ``<state>/api-token``; ``self.token`` is
read from there once it answers. ``allow`` become ``--allow-path`` flags."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from hypersdk.processes import stop_process

START_TIMEOUT = 20.0
TERMINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LoggedProcess:
    """A test's server subprocess with its log file: read the log, crash it with SIGKILL,
    or stop it by its pid."""

    STOP_GRACE = 15.0  # seconds between SIGTERM and SIGKILL
    log_path: Path
    proc: subprocess.Popen[bytes] | None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (a crash)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, grace=self.STOP_GRACE)


class Hypervisord(LoggedProcess):
    def __init__(
        self,
        workdir: Path,
        *,
        token: str | None = None,
        output: Path | None = None,
        allow: tuple[Path, ...] = (),
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.workdir / "state"
        self.token = token
        self.output = output
        self.allow = allow
        self.args = args
        self.extra_env = env or {}
        self.port = free_port()
        self.log_path = self.workdir / "hypervisord.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        scheme = "https" if "--tls-cert" in self.args else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERSDK_")}
        if self.token is not None:
            env["HYPERSDK_API_TOKEN"] = self.token
        return {**env, **self.extra_env}

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "hypersdk.daemon.main",
            "--port", str(self.port), "--state-dir", str(self.state_dir),
        ]  # fmt: skip
        if self.output is not None:
            argv += ["--output", str(self.output)]
        for folder in self.allow:
            argv += ["--allow-path", str(folder)]
        return [*argv, *self.args]

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), env=self.env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hypervisord exited: {self.log()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                health = httpx.get(f"{self.base_url}/health", timeout=1, verify=False)
                if health.status_code == 200:
                    if self.token is None:
                        self.token = (self.state_dir / "api-token").read_text().strip()
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"hypervisord did not start: {self.log()[-3000:]}")
            time.sleep(0.05)

    def client(self, token: str | None = None) -> httpx.Client:
        tok = token if token is not None else self.token
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        # verify=False: the TLS tests use a throw-away self-signed certificate
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30, verify=False)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_job(http: httpx.Client, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = http.get(f"/exports/{job_id}").json()
        if job["state"] in TERMINAL:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not finish: {job}")
        time.sleep(0.05)


def wait_running(
    http: httpx.Client, job_id: str, min_bytes: int = 1, timeout: float = 30.0
) -> dict[str, Any]:
    """Wait until the job copies (bytes_done >= min_bytes)."""
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = http.get(f"/exports/{job_id}").json()
        if job["state"] == "running" and job["bytes_done"] >= min_bytes:
            return job
        assert job["state"] in ("queued", "running"), job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not start copying: {job}")
        time.sleep(0.02)
