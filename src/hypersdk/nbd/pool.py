"""Several NBD connections to one export, one per reading thread.

One :class:`NbdClient` has one socket and one receiver thread: every reply to every
reading thread goes through that thread, and in a full export it is the bottleneck
(docs/design.md, "Profile"). When the server sets NBD_FLAG_CAN_MULTI_CONN, all its
connections to the export see the same data (and a flush on one covers writes on all),
so readers can be spread over several connections. Without the flag only one connection
is opened: data read through another could differ.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

from hypersdk.errors import NbdError
from hypersdk.nbd.client import NbdClient
from hypersdk.nbd.protocol import BlockStatusExtent, NbdProtocolError

log = logging.getLogger(__name__)

DEFAULT_CONNECTIONS = 4
DEFAULT_READ_REQUEST = 512 * 1024
"""A 1 MiB block is read as two pipelined requests: against QEMU's NBD server that
halves the wait for a block (docs/design.md, Profile)."""
_EXTRA_TIMEOUT = 10.0
"""Handshake bound for the extra connections: a server that limits its clients may
leave a new one waiting, and the export can go on with fewer connections."""


class NbdPool:
    """Reads spread over up to ``connections`` clients; block status uses the first.

    Each thread is bound to one connection on its first read (round robin), so the
    threads of a pipeline do not share a socket and its receiver.
    """

    def __init__(self, clients: list[NbdClient]) -> None:
        if not clients:
            raise ValueError("NbdPool needs at least one client")
        self._clients = list(clients)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._next = 0

    @classmethod
    def connect(
        cls,
        address: str,
        export_name: str = "",
        meta_contexts: tuple[str, ...] = (),
        connections: int = DEFAULT_CONNECTIONS,
        timeout: float | None = 30.0,
        read_request_size: int | None = DEFAULT_READ_REQUEST,
    ) -> Self:
        """Connect once; if the export allows multi-conn, open the other connections.
        ``read_request_size`` bounds each NBD read request (None: the server's maximum).

        An extra connection that fails is logged and left out: it only costs speed.
        An extra connection that sees another export (size, multi-conn flag) is a
        protocol error: its data could not be trusted to match.
        """
        first = NbdClient.connect(address, export_name, meta_contexts, timeout)
        clients = [first]
        try:
            if first.can_multi_conn:
                extra_timeout = _EXTRA_TIMEOUT if timeout is None else min(timeout, _EXTRA_TIMEOUT)
                for _ in range(connections - 1):
                    try:
                        client = NbdClient.connect(address, export_name, (), extra_timeout)
                    except NbdError as err:
                        log.warning(
                            "NBD export %r: reading over %d connection(s), another one failed: %s",
                            export_name,
                            len(clients),
                            err,
                        )
                        break
                    clients.append(client)
                    if client.size != first.size or not client.can_multi_conn:
                        raise NbdProtocolError(
                            f"NBD export {export_name!r} changed between connections "
                            f"(size {first.size} then {client.size}, multi-conn "
                            f"{first.can_multi_conn} then {client.can_multi_conn})"
                        )
        except BaseException:
            for client in clients:
                with contextlib.suppress(Exception):
                    client.close()
            raise
        if read_request_size is not None:
            for client in clients:
                client.set_read_request_size(read_request_size)
        return cls(clients)

    # --- what the engine and the provider use ------------------------------------------

    @property
    def primary(self) -> NbdClient:
        return self._clients[0]

    @property
    def connections(self) -> int:
        return len(self._clients)

    @property
    def size(self) -> int:
        return self._clients[0].size

    @property
    def export_name(self) -> str:
        return self._clients[0].export_name

    @property
    def meta_contexts(self) -> dict[str, int]:
        return self._clients[0].meta_contexts

    def block_status(self, context: str, offset: int, length: int) -> list[BlockStatusExtent]:
        return self._clients[0].block_status(context, offset, length)

    def pread(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset`` over this thread's connection."""
        return self._client().pread(offset, length)

    def pread_into(self, offset: int, buffer: bytearray | memoryview) -> None:
        self._client().pread_into(offset, buffer)

    def start_read(self, offset: int, buffer: bytearray | memoryview) -> Callable[[], None]:
        """``NbdClient.start_read`` on the next connection in turn: the reads one thread
        keeps in flight are spread over every connection."""
        return self._next_client().start_read(offset, buffer)

    def close(self) -> None:
        """Close every connection; the first error is raised after all are closed."""
        first: BaseException | None = None
        for client in self._clients:
            try:
                client.close()
            except Exception as exc:  # close the others anyway
                first = first or exc
        if first is not None:
            raise first

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<NbdPool {self.export_name!r} connections={len(self._clients)} size={self.size}>"

    def _client(self) -> NbdClient:
        """This thread's connection, bound on its first read."""
        client: NbdClient | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._next_client()
        return client

    def _next_client(self) -> NbdClient:
        """The connections in turn (round robin)."""
        with self._lock:
            client = self._clients[self._next % len(self._clients)]
            self._next += 1
        return client
