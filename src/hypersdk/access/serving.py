"""Run an :class:`NbdServer` on its own event-loop thread, bound to a unix socket or a
TCP port, and name it by an NBD URI.

One way for every caller: ``hyperctl serve`` (which waits for a signal in the main
thread), the qcow2/vmdk restore and ``verify --boot`` (which serve a generation to a
qemu process for a while) and the daemon's serve sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import threading
import urllib.parse
from concurrent.futures import Future
from dataclasses import dataclass

from hypersdk.errors import UsageError
from hypersdk.nbd.server import ExportBackend, NbdServer, unlink_socket

LOOPBACK = "127.0.0.1"
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the terminating NUL
EXPORT_NAME = ""


@dataclass(frozen=True)
class Listen:
    """Where to listen: a unix socket path, or ``host:port`` (port 0: any free port)."""

    socket: str | None = None
    port: int | None = None
    host: str = LOOPBACK

    def check(self) -> None:
        if (self.socket is None) == (self.port is None):
            raise UsageError("give one of --socket PATH or --port N")
        if self.socket is not None:
            if len(os.fsencode(os.path.abspath(self.socket))) > _SUN_PATH_MAX:
                raise UsageError(f"socket path {self.socket} is too long for a unix socket")
            if os.path.lexists(self.socket):
                raise UsageError(
                    f"{self.socket} exists; choose another socket path (a socket left by a "
                    "killed server may be removed by hand)"
                )
            folder = os.path.dirname(os.path.abspath(self.socket))
            if not os.path.isdir(folder):
                raise UsageError(f"folder {folder} does not exist")
        elif self.port is not None and not 0 <= self.port <= 65535:
            raise UsageError(f"port {self.port} is not between 0 and 65535")


def nbd_uri(listen: Listen, port: int | None = None) -> str:
    """``nbd+unix:///?socket=PATH`` or ``nbd://HOST:PORT/`` (the NBD URI standard)."""
    if listen.socket is not None:
        path = urllib.parse.quote(os.path.abspath(listen.socket), safe="/")
        return f"nbd+unix:///?socket={path}"
    host = listen.host
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    return f"nbd://{host}:{port if port is not None else listen.port}/"


class BackgroundServer:
    """Serve ``backend`` as the export named "" until :meth:`stop`.

    :meth:`start` binds (errors come back as exceptions to the caller) and returns the
    URI. :meth:`stop` closes every connection, removes the unix socket it bound and
    joins the thread; it is safe to call twice.
    """

    def __init__(
        self,
        backend: ExportBackend,
        listen: Listen,
        *,
        workers: int = 8,
        description: str = "",
    ) -> None:
        self.backend = backend
        self.listen = listen
        self.server = NbdServer({EXPORT_NAME: backend}, workers=workers, description=description)
        self.uri = ""
        self.port: int | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="nbd-server", daemon=True)
        self._bound = False
        self._stopped = False

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self) -> str:
        try:
            self.listen.check()
            self._thread.start()
            fut: Future[int | None] = asyncio.run_coroutine_threadsafe(self._bind(), self._loop)
            self.port = fut.result()
        except BaseException:
            self.stop()
            raise
        self.uri = nbd_uri(self.listen, self.port)
        return self.uri

    async def _bind(self) -> int | None:
        if self.listen.socket is not None:
            try:
                await self.server.start_unix(self.listen.socket)
            except OSError as exc:
                raise UsageError(f"cannot listen on {self.listen.socket}: {exc.strerror}") from exc
            self._bound = True
            os.chmod(self.listen.socket, 0o600)  # whoever may connect may read the disk
            return None
        assert self.listen.port is not None
        try:
            port = await self.server.start_tcp(self.listen.host, self.listen.port)
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {self.listen.host}:{self.listen.port}: {exc.strerror or exc}"
            ) from exc
        self._bound = True
        return port

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
        self._loop.close()
        if self._bound and self.listen.socket is not None:
            unlink_socket(self.listen.socket)

    @property
    def active_connections(self) -> int:
        return self.server.active_connections

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
