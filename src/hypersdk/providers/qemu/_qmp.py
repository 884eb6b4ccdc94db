"""QMP access: the only module of the provider that talks to QEMU's monitor.

``qemu.qmp.QMPClient`` is asyncio-only. We run its event loop in a private daemon
thread and submit coroutines with ``asyncio.run_coroutine_threadsafe`` instead of using
``qemu.qmp.legacy.QEMUMonitorProtocol``: the legacy shim drives the *caller's* event
loop with ``run_until_complete``, which fails inside a thread that already runs a loop
(the REST daemon) and is not safe to call from the engine's worker threads. With a
private loop any thread may call :meth:`QmpConnection.execute`, and commands are
serialised by a lock so a multi-step teardown never interleaves with another caller.

Every QMP or socket error is turned into a ``hypersdk.errors`` type here, chained with
``from``; callers never see ``qemu.qmp`` exceptions.

We open the unix socket ourselves and hand it to ``QMPClient.connect``: that way the
kernel tells us who listens on it (``SO_PEERCRED``: the pid, uid and gid of the process
that called ``listen()``, i.e. the QEMU). The QMP socket serves one client at a time, so
the credentials come from the very connection we use, not from a second one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import socket
import struct
import threading
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError, QMPClient, QMPError

from hypersdk.errors import ConnectionFailed, ProviderError

_T = TypeVar("_T")

CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 60.0


class QmpCommandError(ProviderError):
    """QEMU refused a command; ``error_class`` is QMP's class (e.g. ``GenericError``)."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"QEMU refused {command}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


@dataclass(frozen=True, slots=True)
class QmpPeer:
    """Who serves a QMP socket: SO_PEERCRED of our connection, and the socket file."""

    pid: int  # 0 when the kernel cannot name it in our pid namespace
    uid: int
    gid: int
    path: str
    dev: int  # the socket file's device and inode, as stat() saw it when we connected
    ino: int


_UCRED = struct.Struct("3i")  # struct ucred: pid_t pid, uid_t uid, gid_t gid


def _peer(sock: socket.socket, path: str) -> QmpPeer:
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    st = os.stat(path)
    return QmpPeer(pid=pid, uid=uid, gid=gid, path=path, dev=st.st_dev, ino=st.st_ino)


class QmpConnection:
    """A synchronous, thread-safe QMP connection to one QEMU or qemu-storage-daemon."""

    def __init__(self, socket_path: str, *, command_timeout: float = COMMAND_TIMEOUT) -> None:
        self.socket_path = socket_path
        self._timeout = command_timeout
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="hypersdk-qmp", daemon=True
        )
        self._thread.start()
        self._client: QMPClient | None = None
        self._commands: frozenset[str] = frozenset()
        self.peer: QmpPeer | None = None

    @classmethod
    def connect(cls, socket_path: str, *, timeout: float = CONNECT_TIMEOUT) -> QmpConnection:
        conn = cls(socket_path)
        try:
            conn._connect(timeout)
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect(self, timeout: float) -> None:
        client = QMPClient("hypersdk")
        where = f"QMP socket {self.socket_path}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(self.socket_path)
            self.peer = _peer(sock, self.socket_path)
        except OSError as err:
            sock.close()
            raise ConnectionFailed(f"cannot connect to {where}: {err.strerror or err}") from err
        try:
            self._run(client.connect(sock), timeout)  # the client owns the socket now
        except BaseException as err:
            self._discard(client)
            sock.close()
            failure = self._connect_error(err, where, timeout)
            if failure is None:
                raise  # KeyboardInterrupt and the like, as they are
            raise failure from err
        self._client = client
        names = self.execute("query-commands")
        self._commands = frozenset(
            str(c["name"]) for c in names if isinstance(c, dict) and "name" in c
        )

    @staticmethod
    def _connect_error(err: BaseException, where: str, timeout: float) -> ConnectionFailed | None:
        if isinstance(err, TimeoutError | concurrent.futures.TimeoutError):
            return ConnectionFailed(
                f"{where} did not answer as QMP within {timeout:g} s "
                "(not a QMP socket, or another client holds it)"
            )
        if isinstance(err, ConnectError):
            cause = err.exc if isinstance(err.exc, OSError) else err
            detail = getattr(cause, "strerror", None) or str(cause)
            return ConnectionFailed(f"cannot connect to {where}: {detail}")
        if isinstance(err, QMPError | OSError):
            return ConnectionFailed(f"cannot connect to {where}: {err}")
        return None

    def has_command(self, name: str) -> bool:
        return name in self._commands

    def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        """Run one QMP command and return its ``return`` value."""
        if self._client is None:
            raise ConnectionFailed(f"QMP connection to {self.socket_path} is closed")
        with self._lock:
            try:
                return self._run(self._client.execute(command, arguments), self._timeout)
            except ExecuteError as err:
                raise QmpCommandError(command, err.error_class, str(err)) from err
            except ExecInterruptedError as err:
                raise ConnectionFailed(
                    f"QMP connection to {self.socket_path} was lost during {command}"
                ) from err
            except (TimeoutError, concurrent.futures.TimeoutError) as err:
                raise ProviderError(
                    f"QEMU did not answer {command} within {self._timeout:g} s"
                ) from err
            except (QMPError, OSError) as err:
                raise ConnectionFailed(f"QMP {command} failed: {err}") from err

    def transaction(self, actions: list[dict[str, object]]) -> None:
        """Run QMP ``transaction``: all actions happen, or none does."""
        self.execute("transaction", {"actions": actions})

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            self._discard(client)
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()

    def _discard(self, client: QMPClient) -> None:
        # closing a broken connection may fail; there is nothing left to do then
        with contextlib.suppress(Exception):
            self._run(client.disconnect(), 5.0)

    def _run(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout), self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def __enter__(self) -> QmpConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
