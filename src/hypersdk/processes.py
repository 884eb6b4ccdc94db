"""Stop a process by its pid: SIGTERM, a grace period, then SIGKILL. Never by name.

Used by the product (qemu-nbd, the vSphere lab) and by the test rigs (qemu-storage-daemon,
hypervisord), so that every process this project starts is stopped the same way. It is a
top-level module of its own, below every layer, and imports nothing of hypersdk.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

DEFAULT_GRACE = 5.0  # seconds a process gets to exit on SIGTERM
KILL_WAIT = 5.0  # seconds to wait for the kernel after SIGKILL
_POLL = 0.02


def stop_process(
    target: int | subprocess.Popen[Any],
    *,
    grace: float = DEFAULT_GRACE,
    alive: Callable[[int], bool] | None = None,
) -> bool:
    """Stop ``target`` (a Popen, or a bare pid): SIGTERM, wait up to ``grace`` seconds,
    then SIGKILL and wait again. Returns whether it was running.

    With a Popen the process is reaped through it. With a bare pid, ``alive(pid)`` tells
    whether the process is still the one meant (say, a check of its command line against
    pid reuse); by default a pid is alive while it exists and is not a zombie. A child of
    ours is reaped on the way. Returns once it is gone (or after ``KILL_WAIT`` more
    seconds if even SIGKILL leaves it, which only a stuck kernel call does).
    """
    if isinstance(target, subprocess.Popen):
        return _stop_child(target, grace)
    check = alive or _exists
    if not check(target):
        return False
    _signal(target, signal.SIGTERM)
    if not _wait_gone(target, grace, check):
        _signal(target, signal.SIGKILL)
        _wait_gone(target, KILL_WAIT, check)
    return True


def _stop_child(proc: subprocess.Popen[Any], grace: float) -> bool:
    if proc.poll() is not None:
        return False
    _signal(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _signal(proc.pid, signal.SIGKILL)
        proc.wait(timeout=KILL_WAIT)
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
        os.kill(pid, sig)


def _wait_gone(pid: int, timeout: float, alive: Callable[[int], bool]) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        _reap(pid)
        if not alive(pid):
            _settle(pid)
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


def _settle(pid: int, timeout: float = 1.0) -> None:
    """A caller's ``alive`` may say no while the process is still exiting (its command
    line is emptied first), and a multi-threaded child shows as a zombie before it can be
    reaped (its other threads are still exiting). Wait briefly until it has exited and,
    if it is our child, until it is reaped. Bounded, for the rare pid already reused."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reaped, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: gone once it is a zombie or away
            if not _exists(pid):
                return
        else:
            if reaped == pid:
                return
        time.sleep(_POLL)


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our child, so that it does not linger as a
    zombie (which still exists for ``kill(pid, 0)``)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # "pid (comm) S ...": the state follows the last ')' (comm may hold one)
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != b"Z"  # a zombie has exited; only its parent's wait is missing
