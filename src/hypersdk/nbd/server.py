"""An asyncio NBD server over any :class:`ExportBackend`.

The wire format comes from :mod:`hypersdk.nbd.protocol` (shared with the client). What
the server speaks:

- fixed newstyle handshake only (a client without ``C_FIXED_NEWSTYLE`` is dropped);
  options EXPORT_NAME, LIST, INFO, GO, STRUCTURED_REPLY, LIST_META_CONTEXT,
  SET_META_CONTEXT and ABORT; any other option is answered ``ERR_UNSUP``;
- simple replies, or structured replies once negotiated: a read answers with
  OFFSET_DATA and OFFSET_HOLE chunks (holes where the backend knows the bytes are zero),
  errors as ERROR chunks with a message;
- the meta context ``base:allocation`` (the only one): zero ranges are ``HOLE|ZERO``;
- any number of connections and, on each, up to ``max_in_flight`` requests at once
  (and at most ``IN_FLIGHT_BYTES`` of read and write payloads: memory stays bounded).
  Backend calls are blocking and run in a thread pool, so replies may come back out of
  order (the cookie matches them, as the protocol allows).

A malformed request is answered with an error value (``EINVAL``, ``EPERM`` for a write to
a read-only export, ``ENOSPC`` for a write past the end, ``EIO`` when the backend fails)
and the connection goes on; only what cannot be answered (a bad magic, a write payload
larger than the server accepts, a broken connection) closes the connection. Nothing a
client sends stops the server or reaches another connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from hypersdk.errors import HyperSDKError
from hypersdk.nbd import protocol as p

log = logging.getLogger("hypersdk.nbd.server")

MAX_OPTION_DATA = 64 * 1024
"""Option data larger than this is read and discarded, answered ``ERR_TOO_BIG``."""
MAX_PAYLOAD = p.MAX_REQUEST_PAYLOAD
"""Largest read or write (32 MiB); advertised as the maximum block size."""
MAX_STATUS_LENGTH = 0xFFFFFFFF
BASE_ALLOCATION_ID = 1
_HANDSHAKE_TIMEOUT = 30.0
_SEND_BUFFER = 4 * 1024 * 1024
IN_FLIGHT_BYTES = 64 * 1024 * 1024
"""Read and write payloads one connection may hold at once (requests wait beyond)."""
_PAYLOAD_COMMANDS = (p.CMD_READ, p.CMD_WRITE)


@dataclass(frozen=True, slots=True)
class Piece:
    """A part of a read, in order: ``data``, or a hole of ``length`` zero bytes when
    ``data`` is None."""

    length: int
    data: bytes | memoryview | None = None


class ExportBackend(Protocol):
    """What one export offers. Methods are called from worker threads, several at once.

    Raising a :class:`hypersdk.errors.HyperSDKError` or OSError fails that request with
    ``EIO`` (its message goes to the client in a structured error chunk); the connection
    goes on.
    """

    @property
    def size(self) -> int: ...

    @property
    def writable(self) -> bool: ...

    @property
    def multi_conn(self) -> bool:
        """True only when every connection sees every other's completed writes and a
        flush on one covers them all (NBD_FLAG_CAN_MULTI_CONN)."""
        ...

    @property
    def preferred_block_size(self) -> int: ...

    def read(self, offset: int, length: int) -> Sequence[Piece]:
        """Pieces covering ``[offset, offset + length)`` in order."""
        ...

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        """``base:allocation`` from ``offset``: (length, flags) pairs, at least one,
        covering at most ``length`` bytes."""
        ...

    def write(self, offset: int, data: bytes) -> None: ...

    def zero(self, offset: int, length: int) -> None:
        """Write zeros (also used for trim: the data is dropped and reads as zero)."""
        ...

    def flush(self) -> None: ...


class _Drop(Exception):
    """Close this connection (the client broke the protocol or left)."""


class NbdServer:
    """Serves ``exports`` (name -> backend) until :meth:`close`.

    ``workers`` threads run backend calls: more than the cores, because a request for a
    chunk another request is decoding waits for it in its thread.

    ``await start_unix(path)`` or ``await start_tcp(host, port)`` binds; the server is
    then accepting. ``close()`` stops accepting, ends every connection and waits for them.
    """

    def __init__(
        self,
        exports: dict[str, ExportBackend],
        *,
        workers: int = 8,
        max_in_flight: int = 16,
        max_connections: int = 16,
        description: str = "",
    ) -> None:
        if not exports:
            raise ValueError("an NBD server needs at least one export")
        self.exports = exports
        self.description = description
        self.max_in_flight = max_in_flight
        self.max_connections = max_connections
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="nbd-serve")
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.connections_total = 0

    # -- lifecycle ----------------------------------------------------------------------

    async def start_unix(self, path: str) -> None:
        self._server = await asyncio.start_unix_server(self._accept, path=path)

    async def start_tcp(self, host: str, port: int) -> int:
        """Bind and return the port (the chosen one when ``port`` is 0)."""
        self._server = await asyncio.start_server(self._accept, host=host, port=port)
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self._pool.shutdown(wait=True, cancel_futures=True)

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.max_connections:
            log.warning("NBD connection refused: %d connections open", len(self._connections))
            writer.close()
            return
        self._connections.add(task)
        self.connections_total += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # fewer partial sends of large read replies
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
        try:
            await _Connection(self, reader, writer).run()
        except asyncio.CancelledError:
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def call(self, fn: object, *args: object) -> object:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)  # type: ignore[arg-type]


class _Connection:
    def __init__(
        self, server: NbdServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.no_zeroes = False
        self.structured = False
        self.base_allocation = False
        self.export: ExportBackend | None = None
        self.export_name = ""
        self.flags = 0
        self.bytes_in_flight = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def _read(self, n: int) -> bytes:
        try:
            return await self.reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise _Drop("connection closed by the client") from exc

    async def run(self) -> None:
        try:
            await asyncio.wait_for(self._handshake(), _HANDSHAKE_TIMEOUT)
            if self.export is not None:
                await self._transmission()
        except (_Drop, TimeoutError, ConnectionError) as exc:
            log.debug("NBD connection ends: %s", exc)
        finally:
            if self.tasks:
                for task in self.tasks:
                    task.cancel()
                await asyncio.gather(*self.tasks, return_exceptions=True)

    # -- handshake ----------------------------------------------------------------------

    async def _handshake(self) -> None:
        self.writer.write(p.encode_greeting(p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES))
        await self.writer.drain()
        client = p.decode_client_flags(await self._read(4))
        if not client & p.FLAG_C_FIXED_NEWSTYLE or client & ~(
            p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES
        ):
            raise _Drop(f"client flags {client:#x} refused (fixed newstyle only)")
        self.no_zeroes = bool(client & p.FLAG_C_NO_ZEROES)
        while self.export is None:
            try:
                option, length = p.decode_option_header(await self._read(16))
            except p.NbdProtocolError as exc:
                raise _Drop(str(exc)) from exc
            if length > MAX_OPTION_DATA:
                await self._discard(length)
                await self._reply_error(option, p.REP_ERR_TOO_BIG, "option data too large")
                continue
            data = await self._read(length)
            if not await self._option(option, data):
                return

    async def _discard(self, n: int) -> None:
        while n:
            n -= len(await self._read(min(n, 1 << 20)))

    async def _option(self, option: int, data: bytes) -> bool:
        """Answer one option; False when the client aborted."""
        if option == p.OPT_EXPORT_NAME:
            backend = self.server.exports.get(data.decode("utf-8", "replace"))
            if backend is None:
                raise _Drop("NBD_OPT_EXPORT_NAME for an unknown export")  # no way to answer
            self._choose(data.decode("utf-8", "replace"), backend)
            info = p.ExportInfo(backend.size, self.flags)
            self.writer.write(p.encode_export_name_reply(info, self.no_zeroes))
            await self.writer.drain()
            return True
        if option == p.OPT_ABORT:
            await self._reply(option, p.REP_ACK)
            return False
        if option == p.OPT_LIST:
            if data:
                return await self._reply_error(option, p.REP_ERR_INVALID, "LIST takes no data")
            for name in self.server.exports:
                raw = name.encode()
                await self._reply(option, p.REP_SERVER, p.U32.pack(len(raw)) + raw)
            await self._reply(option, p.REP_ACK)
            return True
        if option == p.OPT_STRUCTURED_REPLY:
            if data:
                return await self._reply_error(option, p.REP_ERR_INVALID, "takes no data")
            self.structured = True
            await self._reply(option, p.REP_ACK)
            return True
        if option in (p.OPT_LIST_META_CONTEXT, p.OPT_SET_META_CONTEXT):
            return await self._meta_context(option, data)
        if option in (p.OPT_INFO, p.OPT_GO):
            return await self._info(option, data)
        return await self._reply_error(option, p.REP_ERR_UNSUP, f"{p.option_name(option)}")

    async def _meta_context(self, option: int, data: bytes) -> bool:
        try:
            name, queries = p.decode_meta_context_request(data)
        except p.NbdProtocolError as exc:
            return await self._reply_error(option, p.REP_ERR_INVALID, str(exc))
        if not self.structured:
            return await self._reply_error(
                option, p.REP_ERR_INVALID, "meta contexts need structured replies first"
            )
        if name not in self.server.exports:
            return await self._reply_error(option, p.REP_ERR_UNKNOWN, f"no export {name!r}")
        listing = option == p.OPT_LIST_META_CONTEXT
        chosen = False
        for query in queries if queries or not listing else ("base:",):
            hit = query == p.CONTEXT_BASE_ALLOCATION or (listing and query == "base:")
            if hit:
                chosen = True
                await self._reply(
                    option,
                    p.REP_META_CONTEXT,
                    p.encode_meta_context_reply(
                        0 if listing else BASE_ALLOCATION_ID, p.CONTEXT_BASE_ALLOCATION
                    ),
                )
        if not listing:
            self.base_allocation = chosen  # SET replaces any earlier selection
        await self._reply(option, p.REP_ACK)
        return True

    async def _info(self, option: int, data: bytes) -> bool:
        try:
            name, types = p.decode_info_request(data)
        except p.NbdProtocolError as exc:
            return await self._reply_error(option, p.REP_ERR_INVALID, str(exc))
        backend = self.server.exports.get(name)
        if backend is None:
            return await self._reply_error(option, p.REP_ERR_UNKNOWN, f"no export {name!r}")
        flags = _transmission_flags(backend, self.structured)
        await self._reply(
            option, p.REP_INFO, p.encode_info_export(p.ExportInfo(backend.size, flags))
        )
        if p.INFO_BLOCK_SIZE in types:
            preferred = max(512, min(backend.preferred_block_size, MAX_PAYLOAD))
            sizes = p.BlockSizeInfo(1, preferred, MAX_PAYLOAD)
            await self._reply(option, p.REP_INFO, p.encode_info_block_size(sizes))
        if p.INFO_NAME in types:
            await self._reply(option, p.REP_INFO, p.U16.pack(p.INFO_NAME) + name.encode())
        if p.INFO_DESCRIPTION in types and self.server.description:
            text = self.server.description.encode()[: p.MAX_STRING]
            await self._reply(option, p.REP_INFO, p.U16.pack(p.INFO_DESCRIPTION) + text)
        await self._reply(option, p.REP_ACK)
        if option == p.OPT_GO:
            self._choose(name, backend)
        return True

    def _choose(self, name: str, backend: ExportBackend) -> None:
        self.export = backend
        self.export_name = name
        self.flags = _transmission_flags(backend, self.structured)
        if not self.structured:
            self.base_allocation = False

    async def _reply(self, option: int, reply_type: int, data: bytes = b"") -> None:
        self.writer.write(p.encode_option_reply(option, reply_type, data))
        await self.writer.drain()

    async def _reply_error(self, option: int, reply_type: int, message: str) -> bool:
        await self._reply(option, reply_type, message.encode()[: p.MAX_STRING])
        return True

    # -- transmission -------------------------------------------------------------------

    async def _transmission(self) -> None:
        assert self.export is not None
        backend = self.export
        while True:
            header = await self._read(p.REQUEST.size)
            try:
                req = p.decode_request(header)
            except p.NbdProtocolError as exc:
                raise _Drop(str(exc)) from exc
            if req.command == p.CMD_DISC:
                if self.tasks:
                    await asyncio.gather(*self.tasks, return_exceptions=True)
                return
            # Memory per connection stays bounded: a client that sends reads and never
            # reads the replies waits here once its requests in flight hold the budget.
            cost = min(req.length, MAX_PAYLOAD) if req.command in _PAYLOAD_COMMANDS else 0
            while self.tasks and (
                len(self.tasks) >= self.server.max_in_flight
                or self.bytes_in_flight + cost > IN_FLIGHT_BYTES
            ):
                await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
            payload = b""
            if req.command == p.CMD_WRITE:
                if req.length > MAX_PAYLOAD:
                    raise _Drop(f"write of {req.length} bytes is larger than {MAX_PAYLOAD}")
                payload = await self._read(req.length)
            self.bytes_in_flight += cost
            task = asyncio.create_task(self._handle(backend, req, payload))
            self.tasks.add(task)
            task.add_done_callback(functools.partial(self._done, cost=cost))

    def _done(self, task: asyncio.Task[None], *, cost: int) -> None:
        self.tasks.discard(task)
        self.bytes_in_flight -= cost

    async def _handle(self, backend: ExportBackend, req: p.Request, payload: bytes) -> None:
        try:
            error, message = _check(backend, req, self.base_allocation)
            if error:
                self._send_error(req, error, message)
            elif req.command == p.CMD_READ:
                pieces = await self.server.call(backend.read, req.offset, req.length)
                self._send_read(req, pieces)  # type: ignore[arg-type]
            elif req.command == p.CMD_BLOCK_STATUS:
                extents: list[tuple[int, int]] = await self.server.call(  # type: ignore[assignment]
                    backend.block_status, req.offset, req.length
                )
                if req.flags & p.CMD_FLAG_REQ_ONE:
                    extents = extents[:1]
                self._send_status(req, extents)
            else:
                if req.command == p.CMD_WRITE:
                    await self.server.call(backend.write, req.offset, payload)
                elif req.command in (p.CMD_TRIM, p.CMD_WRITE_ZEROES):
                    await self.server.call(backend.zero, req.offset, req.length)
                if req.command == p.CMD_FLUSH or req.flags & p.CMD_FLAG_FUA:
                    await self.server.call(backend.flush)
                self._send_ok(req)
        except asyncio.CancelledError:
            raise
        except (HyperSDKError, OSError) as exc:
            log.warning("NBD %s at %d: %s", p.command_name(req.command), req.offset, exc)
            self._send_error(req, p.EIO, str(exc))
        except Exception as exc:  # a backend bug must not end the connection unanswered
            log.exception("NBD %s at %d failed", p.command_name(req.command), req.offset)
            self._send_error(req, p.EIO, f"internal error: {type(exc).__name__}")
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    # Each reply is written whole without an await in between, so replies of concurrent
    # requests never interleave on the wire.

    def _send_ok(self, req: p.Request) -> None:
        if self.structured:
            self.writer.write(
                p.encode_chunk_header(p.REPLY_FLAG_DONE, p.REPLY_TYPE_NONE, req.cookie, 0)
            )
        else:
            self.writer.write(p.encode_simple_reply(0, req.cookie))

    def _send_error(self, req: p.Request, error: int, message: str) -> None:
        if self.structured:
            body = p.encode_error_chunk(error, message.encode()[:1024].decode("utf-8", "ignore"))
            self.writer.write(
                p.encode_chunk_header(p.REPLY_FLAG_DONE, p.REPLY_TYPE_ERROR, req.cookie, len(body))
                + body
            )
        else:
            self.writer.write(p.encode_simple_reply(error, req.cookie))

    def _send_read(self, req: p.Request, pieces: Sequence[Piece]) -> None:
        if not self.structured:
            self.writer.write(p.encode_simple_reply(0, req.cookie))
            for x in pieces:
                self.writer.write(x.data if x.data is not None else bytes(x.length))
            return
        if req.flags & p.CMD_FLAG_DF and len(pieces) > 1:
            # "don't fragment": one content chunk for the whole read
            joined = b"".join(x.data if x.data is not None else bytes(x.length) for x in pieces)
            pieces = [Piece(len(joined), joined)]
        offset = req.offset
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            flags = p.REPLY_FLAG_DONE if i == last else 0
            if piece.data is None:
                self.writer.write(
                    p.encode_chunk_header(flags, p.REPLY_TYPE_OFFSET_HOLE, req.cookie, 12)
                    + p.encode_offset_hole(offset, piece.length)
                )
            else:
                head = p.encode_chunk_header(
                    flags, p.REPLY_TYPE_OFFSET_DATA, req.cookie, 8 + piece.length
                )
                # Two writes, not writelines: before Python 3.12 that joins (copies) them.
                self.writer.write(head + p.U64.pack(offset))
                self.writer.write(piece.data)
            offset += piece.length

    def _send_status(self, req: p.Request, extents: list[tuple[int, int]]) -> None:
        body = p.encode_block_status(BASE_ALLOCATION_ID, extents)
        self.writer.write(
            p.encode_chunk_header(
                p.REPLY_FLAG_DONE, p.REPLY_TYPE_BLOCK_STATUS, req.cookie, len(body)
            )
            + body
        )


def _transmission_flags(backend: ExportBackend, structured: bool) -> int:
    flags = p.TFLAG_HAS_FLAGS
    if structured:  # "don't fragment" means nothing without structured replies
        flags |= p.TFLAG_SEND_DF
    if backend.writable:
        flags |= (
            p.TFLAG_SEND_FLUSH | p.TFLAG_SEND_FUA | p.TFLAG_SEND_TRIM | p.TFLAG_SEND_WRITE_ZEROES
        )
    else:
        flags |= p.TFLAG_READ_ONLY
    if backend.multi_conn:
        flags |= p.TFLAG_CAN_MULTI_CONN
    return flags


_KNOWN_FLAGS = {
    p.CMD_READ: p.CMD_FLAG_DF,
    p.CMD_WRITE: p.CMD_FLAG_FUA,
    p.CMD_FLUSH: 0,
    p.CMD_TRIM: p.CMD_FLAG_FUA,
    p.CMD_WRITE_ZEROES: p.CMD_FLAG_FUA | p.CMD_FLAG_NO_HOLE | p.CMD_FLAG_FAST_ZERO,
    p.CMD_BLOCK_STATUS: p.CMD_FLAG_REQ_ONE,
    p.CMD_CACHE: 0,
}


def _check(backend: ExportBackend, req: p.Request, base_allocation: bool) -> tuple[int, str]:
    """(0, "") when the request may run, else (NBD error value, message)."""
    cmd = req.command
    if cmd not in _KNOWN_FLAGS or cmd == p.CMD_CACHE:
        return p.EINVAL, f"unsupported command {cmd}"
    if req.flags & ~_KNOWN_FLAGS[cmd]:
        return p.EINVAL, f"unsupported flags {req.flags:#x} for {p.command_name(cmd)}"
    if cmd == p.CMD_FLUSH:
        return (0, "") if backend.writable else (p.EINVAL, "flush on a read-only export")
    writes = cmd in (p.CMD_WRITE, p.CMD_TRIM, p.CMD_WRITE_ZEROES)
    if writes and not backend.writable:
        return p.EPERM, "the export is read-only"
    if cmd == p.CMD_WRITE_ZEROES and req.flags & p.CMD_FLAG_FAST_ZERO:
        return p.ENOTSUP, "fast zero is not supported"
    if cmd == p.CMD_BLOCK_STATUS and not base_allocation:
        return p.EINVAL, "no meta context was negotiated"
    if req.length == 0:
        return p.EINVAL, "zero-length request"
    if cmd == p.CMD_READ and req.length > MAX_PAYLOAD:
        return p.EOVERFLOW, f"read of {req.length} bytes is larger than {MAX_PAYLOAD}"
    if req.offset + req.length > backend.size:
        return (p.ENOSPC if writes else p.EINVAL), "request beyond the end of the export"
    return 0, ""


def unlink_socket(path: str) -> None:
    """Remove a unix socket this server bound (not any other kind of file)."""
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode):
            os.unlink(path)


__all__ = ["ExportBackend", "NbdServer", "Piece", "unlink_socket"]
