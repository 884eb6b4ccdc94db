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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine, Mapping
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
        try:
            self._run(client.connect(self.socket_path), timeout)
        except (TimeoutError, concurrent.futures.TimeoutError) as err:
            self._discard(client)
            raise ConnectionFailed(
                f"{where} did not answer as QMP within {timeout:g} s "
                "(not a QMP socket, or another client holds it)"
            ) from err
        except ConnectError as err:
            self._discard(client)
            cause = err.exc if isinstance(err.exc, OSError) else err
            detail = getattr(cause, "strerror", None) or str(cause)
            raise ConnectionFailed(f"cannot connect to {where}: {detail}") from err
        except (QMPError, OSError) as err:
            self._discard(client)
            raise ConnectionFailed(f"cannot connect to {where}: {err}") from err
        self._client = client
        names = self.execute("query-commands")
        self._commands = frozenset(
            str(c["name"]) for c in names if isinstance(c, dict) and "name" in c
        )

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
