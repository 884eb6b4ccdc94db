"""hypersdk.processes.stop_process: SIGTERM, a grace period, then SIGKILL; by pid only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from hypersdk.processes import stop_process

# Prints "ready" once its SIGTERM handling is in place, then sleeps.
STUBBORN = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
POLITE = "import sys, time"
READY = "; print('ready', flush=True); time.sleep(60)"


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:  # a failed test leaves nothing running
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start(procs: list[subprocess.Popen[str]], code: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code + READY], stdout=subprocess.PIPE, text=True)
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_a_process_that_ignores_sigterm_is_killed(spawn: list[subprocess.Popen[str]]) -> None:
    proc = start(spawn, STUBBORN)
    t0 = time.monotonic()
    assert stop_process(proc, grace=0.3) is True
    assert proc.returncode == -signal.SIGKILL
    assert 0.3 <= time.monotonic() - t0 < 4


def test_a_process_that_obeys_gets_only_sigterm(spawn: list[subprocess.Popen[str]]) -> None:
    proc = start(spawn, POLITE)
    assert stop_process(proc, grace=5) is True
    assert proc.returncode == -signal.SIGTERM


def test_by_bare_pid_escalates_and_reaps(spawn: list[subprocess.Popen[str]]) -> None:
    proc = start(spawn, STUBBORN)
    assert stop_process(proc.pid, grace=0.3) is True
    # gone, and reaped: not even a zombie is left under this pid
    with pytest.raises(ChildProcessError):
        os.waitpid(proc.pid, 0)
    assert stop_process(proc.pid, grace=0.3) is False


def test_an_exited_process_is_left_alone(spawn: list[subprocess.Popen[str]]) -> None:
    proc = start(spawn, POLITE)
    proc.kill()
    proc.wait()
    assert stop_process(proc, grace=0.3) is False


def test_a_pid_that_is_not_ours_any_more_is_not_signalled(
    spawn: list[subprocess.Popen[str]],
) -> None:
    proc = start(spawn, POLITE)
    # the check says the pid now belongs to someone else (reused): hands off
    assert stop_process(proc.pid, grace=0.3, alive=lambda pid: False) is False
    assert proc.poll() is None
