"""A thread-safe NBD client over one socket.

Any number of threads may call :meth:`NbdClient.pread` and the other commands at
once: each request is sent whole under a send lock, registered by its cookie, and one
receiver thread reads every reply, writing read payloads straight into the caller's
buffer (``recv_into``), then wakes the caller. When the connection fails, the server
breaks the protocol or a request is not answered within ``timeout`` seconds, the
receiver fails every pending request with an :class:`NbdError` and the client becomes
unusable; nothing waits forever.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

from hypersdk.errors import NbdError
from hypersdk.nbd import protocol as p
from hypersdk.nbd.protocol import (
    BlockStatusExtent,
    NbdCommandError,
    NbdConnectionError,
    NbdOptionError,
    NbdProtocolError,
)

DEFAULT_PREFERRED_BLOCK_SIZE = 4096
_LENGTH_CAP = 1 << 30
"""Largest trim or write-zeroes request: 1 GiB."""
_STATUS_CAP = (1 << 32) - (1 << 20)
"""Largest block status request: lengths are 32-bit; 4 GiB - 1 MiB stays aligned to any
minimum block size a server may ask for (at most 64 KiB)."""
_STATUS_IN_FLIGHT = 8  # block status requests sent before the first answer is read
_RECV_BUFFER = 256 * 1024
_READ_AHEAD = 4096
"""What a header read may take beyond what it needs: enough for the small chunks of a
block-status reply, small enough that a read's payload lands in the caller's buffer
(``read_into``) and not here first (a second copy, measured as 7% of an export's CPU)."""
_SCRATCH_MAX = 8 * 1024 * 1024


def _parse_address(address: str) -> tuple[int, str | tuple[str, int]]:
    """Map an address to (socket family, connect argument)."""
    if address.startswith("unix:"):
        return socket.AF_UNIX, address[5:]
    tcp = address[4:] if address.startswith("tcp:") else None
    if tcp is None and ("/" in address or ":" not in address):
        return socket.AF_UNIX, address
    hostport = tcp if tcp is not None else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise NbdError(f"invalid NBD address {address!r}: expected tcp:HOST:PORT or a path")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return socket.AF_INET6 if ":" in host else socket.AF_INET, (host, int(port))


def _done() -> None:
    """The wait of a read that already completed."""


class _Reader:
    """Buffered exact reads from a socket; large payloads bypass the buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray(_RECV_BUFFER)
        self._view = memoryview(self._buf)
        self._pos = 0
        self._end = 0

    def _fill(self, n: int) -> None:
        """Make at least n bytes available in the buffer (n <= buffer size)."""
        if self._pos:
            avail = self._end - self._pos
            self._view[:avail] = self._view[self._pos : self._end]
            self._pos, self._end = 0, avail
        while self._end < n:
            want = max(n - self._end, _READ_AHEAD)
            got = self._sock.recv_into(self._view[self._end : self._end + want])
            if not got:
                raise EOFError
            self._end += got

    def read(self, n: int) -> bytes:
        if n > len(self._buf):
            out = bytearray(n)
            self.read_into(memoryview(out))
            return bytes(out)
        if self._end - self._pos < n:
            self._fill(n)
        pos = self._pos
        self._pos = pos + n
        return bytes(self._view[pos : pos + n])

    def read_into(self, dest: memoryview) -> None:
        n = len(dest)
        take = min(n, self._end - self._pos)
        if take:
            dest[:take] = self._view[self._pos : self._pos + take]
            self._pos += take
        while take < n:
            got = self._sock.recv_into(dest[take:])
            if not got:
                raise EOFError
            take += got

    def skip(self, n: int) -> None:
        while n:
            step = min(n, len(self._buf))
            self.read(step)
            n -= step


class _Request:
    __slots__ = (
        "buffer",
        "command",
        "context_id",
        "cookie",
        "coverage",
        "error",
        "event",
        "extents",
        "length",
        "offset",
    )

    def __init__(
        self,
        command: int,
        offset: int,
        length: int,
        buffer: memoryview | None = None,
        context_id: int = -1,
    ) -> None:
        self.command = command
        self.offset = offset
        self.length = length
        self.buffer = buffer
        self.context_id = context_id
        self.cookie = 0
        # which bytes of a read the reply set; a simple reply sets them all at once
        self.coverage = p.ReadCoverage(offset, length) if command == p.CMD_READ else None
        self.error: NbdError | None = None
        self.event = threading.Event()
        self.extents: list[tuple[int, int]] | None = None

    def describe(self) -> str:
        name = p.command_name(self.command)
        if self.command == p.CMD_FLUSH:
            return name
        return f"{name} of {self.length} bytes at offset {self.offset}"

    def fail(self, error: NbdError) -> None:
        if self.error is None:
            self.error = error


class NbdClient:
    """A connection to one NBD export; create it with :meth:`connect`."""

    def __init__(
        self,
        sock: socket.socket,
        address: str,
        export_name: str,
        size: int,
        transmission_flags: int,
        block_sizes: p.BlockSizeInfo | None,
        structured_replies: bool,
        meta_contexts: dict[str, int],
        timeout: float | None,
    ) -> None:
        self._sock = sock
        self._address = address
        self.export_name = export_name
        self.size = size
        self.transmission_flags = transmission_flags
        self.structured_replies = structured_replies
        self.meta_contexts = dict(meta_contexts)
        self._timeout = timeout
        flags = transmission_flags if transmission_flags & p.TFLAG_HAS_FLAGS else 0
        self.read_only = bool(flags & p.TFLAG_READ_ONLY)
        self.can_flush = bool(flags & p.TFLAG_SEND_FLUSH)
        self.can_fua = bool(flags & p.TFLAG_SEND_FUA)
        self.can_trim = bool(flags & p.TFLAG_SEND_TRIM)
        self.can_write_zeroes = bool(flags & p.TFLAG_SEND_WRITE_ZEROES)
        self.can_multi_conn = bool(flags & p.TFLAG_CAN_MULTI_CONN)
        if block_sizes is not None:
            self.block_size_minimum = max(1, block_sizes.minimum)
            self.block_size_preferred = max(self.block_size_minimum, block_sizes.preferred)
            self.block_size_maximum = max(self.block_size_minimum, block_sizes.maximum)
        else:
            self.block_size_minimum = 1
            self.block_size_preferred = DEFAULT_PREFERRED_BLOCK_SIZE
            self.block_size_maximum = p.MAX_REQUEST_PAYLOAD
        max_payload = min(self.block_size_maximum, p.MAX_REQUEST_PAYLOAD)
        if max_payload >= self.block_size_minimum:
            max_payload -= max_payload % self.block_size_minimum
        self._max_payload = max(max_payload, 1)
        self._read_request = self._max_payload

        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._pending: dict[int, _Request] = {}
        self._next_cookie = 1
        self._local = threading.local()
        self._dead: NbdError | None = None
        self._closed = False
        self._reader = _Reader(sock)
        self._receiver = threading.Thread(
            target=self._receive_loop, name=f"nbd-receiver {address}", daemon=True
        )
        self._receiver.start()

    # --- connecting -----------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        address: str,
        export_name: str = "",
        meta_contexts: tuple[str, ...] = (),
        timeout: float | None = 30.0,
    ) -> Self:
        """Connect, negotiate and return a client ready for commands.

        ``address`` is ``unix:/path``, a filesystem path, ``tcp:HOST:PORT`` or
        ``HOST:PORT``. Meta contexts the server does not offer are left out of
        :attr:`meta_contexts`; :meth:`block_status` refuses them. ``timeout`` bounds
        connecting, each handshake step and the wait for each command's reply.
        """
        sock = _open_socket(address, timeout)
        hs = _Handshake(sock, address, export_name)
        try:
            hs.run(tuple(meta_contexts))
            sock.settimeout(None)
        except NbdOptionError:
            hs.abort()
            sock.close()
            raise
        except BaseException:
            sock.close()
            raise
        return cls(
            sock,
            address,
            export_name,
            hs.info.size,
            hs.info.transmission_flags,
            hs.block_sizes,
            hs.structured,
            hs.contexts,
            timeout,
        )

    @staticmethod
    def list_meta_contexts(
        address: str,
        export_name: str = "",
        queries: tuple[str, ...] = (),
        timeout: float | None = 30.0,
    ) -> list[str]:
        """Ask the server which meta contexts an export offers (all when no query)."""
        sock = _open_socket(address, timeout)
        try:
            hs = _Handshake(sock, address, export_name)
            hs.greet()
            if not hs.negotiate_structured():
                return []
            names = list(hs.meta_contexts(p.OPT_LIST_META_CONTEXT, queries))
            hs.abort()
            return names
        finally:
            sock.close()

    # --- context manager --------------------------------------------------------------

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
        return f"<NbdClient {self._address!r} export={self.export_name!r} size={self.size}>"

    @property
    def read_request_size(self) -> int:
        """The largest single NBD read request; longer reads are split and pipelined."""
        return self._read_request

    def set_read_request_size(self, size: int) -> None:
        """Split reads into requests of at most ``size`` bytes (clamped to what the
        server allows, a multiple of its minimum block size). The pieces of one read are
        all sent at once: the server works on them concurrently and the first bytes
        arrive sooner, so one read waits less than for one large request."""
        align = self.block_size_minimum
        size = min(max(size, align), self._max_payload)
        self._read_request = max(size - size % align, align)

    # --- commands -----------------------------------------------------------------------

    def pread(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``; holes read as zeros."""
        if length == 0:
            self._check_range(offset, length)
            return b""
        if length > _SCRATCH_MAX:
            buf = bytearray(length)
            self.pread_into(offset, buf)
            return bytes(buf)
        # A per-thread scratch buffer saves allocating (and faulting in) fresh memory
        # for every read; only the returned bytes object is new.
        scratch: bytearray | None = getattr(self._local, "scratch", None)
        if scratch is None or len(scratch) < length:
            scratch = bytearray(max(length, 1 << 20))
            self._local.scratch = scratch
        view = memoryview(scratch)[:length]
        self.pread_into(offset, view)
        return bytes(view)

    def pread_into(self, offset: int, buffer: bytearray | memoryview) -> None:
        """Fill the writable ``buffer`` with the bytes at ``offset`` (no extra copy).

        The receiver writes replies straight into ``buffer``; on error its content is
        undefined.
        """
        self.start_read(offset, buffer)()

    def start_read(self, offset: int, buffer: bytearray | memoryview) -> Callable[[], None]:
        """Send the read of ``buffer``'s length at ``offset`` and return at once; calling
        what is returned waits for the replies (and raises their error). Until then the
        receiver may be writing into ``buffer``: the caller must not touch it. This lets
        a pipeline keep reads in flight while it works on blocks already read."""
        view = memoryview(buffer).cast("B")
        if view.readonly:
            raise TypeError("pread_into needs a writable buffer")
        length = len(view)
        self._check_range(offset, length)
        align = self.block_size_minimum
        if length and (offset % align or length % align):
            # The server asked for aligned requests: read the aligned cover, copy out.
            start = offset - offset % align
            end = min(-(-(offset + length) // align) * align, self.size)
            cover = bytearray(end - start)
            self.pread_into(start, cover)
            view[:] = memoryview(cover)[offset - start : offset - start + length]
            return _done
        requests = [
            self._submit(_Request(p.CMD_READ, offset + pos, n, view[pos : pos + n]))
            for pos, n in _split(length, self._read_request)
        ]
        return functools.partial(self._wait_all, requests)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        """Write ``data`` at ``offset``. ``fua`` flushes it to stable storage
        (NBD_CMD_FLAG_FUA, or a flush afterwards when the server lacks FUA)."""
        self._check_writable("write")
        payload = memoryview(data).cast("B")
        self._check_range(offset, len(payload))
        self._check_aligned("write", offset, len(payload))
        if not len(payload):
            return
        flags = p.CMD_FLAG_FUA if fua and self.can_fua else 0
        requests = [
            self._submit(_Request(p.CMD_WRITE, offset + pos, n), flags, payload[pos : pos + n])
            for pos, n in _split(len(payload), self._max_payload)
        ]
        self._wait_all(requests)
        if fua and not self.can_fua:
            self.flush()

    def write_zeroes(self, offset: int, length: int) -> None:
        """Make ``[offset, offset+length)`` read as zeros (NBD_CMD_WRITE_ZEROES)."""
        self._check_writable("write zeroes")
        if not self.can_write_zeroes:
            raise NbdError(f"NBD export {self.export_name!r} does not support write zeroes")
        self._simple_ranged(p.CMD_WRITE_ZEROES, offset, length)

    def trim(self, offset: int, length: int) -> None:
        """Discard ``[offset, offset+length)``; its content becomes undefined."""
        self._check_writable("trim")
        if not self.can_trim:
            raise NbdError(f"NBD export {self.export_name!r} does not support trim")
        self._simple_ranged(p.CMD_TRIM, offset, length)

    def flush(self) -> None:
        """Flush written data to stable storage; a no-op if the server offers no flush."""
        if not self.can_flush:
            self._check_alive()
            return
        self._wait_all([self._submit(_Request(p.CMD_FLUSH, 0, 0))])

    def block_status(self, context: str, offset: int, length: int) -> list[BlockStatusExtent]:
        """Extents of ``context`` covering ``[offset, offset+length)``.

        Sends NBD_CMD_BLOCK_STATUS for consecutive pieces of the range, several in
        flight; where the server answers a piece in part, asks again from the end of the
        extents it actually returned, until the range is covered. Extents are clipped
        to the range and adjacent ones with equal flags are merged.
        """
        context_id = self.meta_contexts.get(context)
        if context_id is None:
            offered = ", ".join(sorted(self.meta_contexts)) or "none"
            raise NbdError(
                f"NBD meta context {context!r} was not negotiated on export "
                f"{self.export_name!r} (negotiated: {offered})"
            )
        self._check_range(offset, length)
        end = offset + length
        pos = offset  # everything before it is in ``result``
        sent = offset  # everything before it was asked for
        result: list[BlockStatusExtent] = []
        # Several requests in flight, answered in turn: a 62 TiB disk takes 15,000 of
        # them, and one round trip each would cost seconds.
        waiting: collections.deque[_Request] = collections.deque()
        while pos < end:
            while sent < end and len(waiting) < _STATUS_IN_FLIGHT:
                n = min(end - sent, _STATUS_CAP)
                waiting.append(
                    self._submit(_Request(p.CMD_BLOCK_STATUS, sent, n, context_id=context_id))
                )
                sent += n
            request = waiting.popleft()
            self._wait_all([request])
            stop = request.offset + request.length
            start = pos
            for ext_len, flags in request.extents or ():
                if ext_len == 0:
                    continue
                n = min(ext_len, stop - pos)  # never past this request: the next covers it
                if n <= 0:
                    break
                last = result[-1] if result else None
                if last is not None and last.flags == flags:
                    result[-1] = BlockStatusExtent(last.offset, last.length + n, flags)
                else:
                    result.append(BlockStatusExtent(pos, n, flags))
                pos += n
            if pos == start:
                raise NbdProtocolError(
                    f"NBD server stopped advancing block status for {context!r} "
                    f"at offset {pos} of export {self.export_name!r}"
                )
            if pos < stop:  # a short answer: ask for the rest before the next in line
                waiting.appendleft(
                    self._submit(
                        _Request(p.CMD_BLOCK_STATUS, pos, stop - pos, context_id=context_id)
                    )
                )
        return result

    def close(self) -> None:
        """Send NBD_CMD_DISC, close the socket and fail any request still pending."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            alive = self._dead is None
        if alive:
            with contextlib.suppress(OSError), self._send_lock:
                self._sock.sendall(p.encode_request(0, p.CMD_DISC, 0, 0, 0))
        self._fail_all(NbdConnectionError(f"NBD connection to {self._address} was closed"))
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if threading.current_thread() is not self._receiver:
            self._receiver.join(timeout=5.0)
        self._sock.close()

    # --- internals ----------------------------------------------------------------------

    def _check_alive(self) -> None:
        dead = self._dead
        if dead is not None:
            raise _fresh(dead)

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise NbdError(
                f"NBD request of {length} bytes at offset {offset} is outside export "
                f"{self.export_name!r} of {self.size} bytes"
            )

    def _check_writable(self, what: str) -> None:
        if self.read_only:
            raise NbdError(f"cannot {what}: NBD export {self.export_name!r} is read-only")

    def _check_aligned(self, what: str, offset: int, length: int) -> None:
        align = self.block_size_minimum
        if offset % align or (length % align and offset + length != self.size):
            raise NbdError(
                f"cannot {what} {length} bytes at offset {offset}: NBD export "
                f"{self.export_name!r} requires requests aligned to {align} bytes"
            )

    def _simple_ranged(self, command: int, offset: int, length: int) -> None:
        self._check_range(offset, length)
        self._check_aligned(p.command_name(command), offset, length)
        step = _LENGTH_CAP - _LENGTH_CAP % self.block_size_minimum
        requests = [
            self._submit(_Request(command, offset + pos, n)) for pos, n in _split(length, step)
        ]
        self._wait_all(requests)

    def _submit(
        self, request: _Request, flags: int = 0, payload: memoryview | None = None
    ) -> _Request:
        with self._state_lock:
            if self._dead is not None or self._closed:
                request.fail(self._dead or NbdConnectionError("NBD client is closed"))
                request.event.set()
                return request
            cookie = self._next_cookie
            self._next_cookie = cookie + 1 if cookie < 0xFFFFFFFFFFFFFFFF else 1
            request.cookie = cookie
            self._pending[cookie] = request
        header = p.encode_request(flags, request.command, cookie, request.offset, request.length)
        try:
            with self._send_lock:
                if payload is None:
                    self._sock.sendall(header)
                elif len(payload) <= 65536:
                    self._sock.sendall(header + payload)
                else:
                    self._sock.sendall(header)
                    self._sock.sendall(payload)
        except OSError as exc:
            err = NbdConnectionError(
                f"NBD connection to {self._address} failed while sending "
                f"{request.describe()}: {exc.strerror or exc}"
            )
            self._die(err, exc)
        return request

    def _wait_all(self, requests: list[_Request]) -> None:
        for request in requests:
            if not request.event.wait(self._timeout):
                self._die(
                    NbdConnectionError(
                        f"NBD server {self._address} did not answer {request.describe()} "
                        f"within {self._timeout:g} s"
                    )
                )
                request.event.wait(5.0)
        for request in requests:
            if request.error is not None:
                raise _fresh(request.error)

    def _die(self, error: NbdError, cause: BaseException | None = None) -> None:
        """Mark the connection dead, fail all pending requests, wake the receiver."""
        if cause is not None:
            error.__cause__ = cause
        self._fail_all(error)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def _fail_all(self, error: NbdError) -> None:
        with self._state_lock:
            if self._dead is None:
                self._dead = error
            pending = list(self._pending.values())
            self._pending.clear()
        for request in pending:
            request.fail(error)
            request.event.set()

    def _receive_loop(self) -> None:
        try:
            while True:
                self._receive_one()
        except EOFError:
            self._die(NbdConnectionError(f"NBD server {self._address} closed the connection"))
        except OSError as exc:
            self._die(
                NbdConnectionError(
                    f"NBD connection to {self._address} failed: {exc.strerror or exc}"
                ),
                exc,
            )
        except NbdError as exc:
            self._die(exc)
        except Exception as exc:  # a bug here must never leave callers waiting
            self._die(NbdError(f"NBD receiver failed: {exc!r}"), exc)

    def _lookup(self, cookie: int) -> _Request:
        with self._state_lock:
            request = self._pending.get(cookie)
        if request is None:
            raise NbdProtocolError(f"NBD server replied with unknown cookie {cookie}")
        return request

    def _complete(self, request: _Request) -> None:
        with self._state_lock:
            self._pending.pop(request.cookie, None)
        request.event.set()

    def _command_error(self, request: _Request, error: int, message: str = "") -> NbdCommandError:
        text = f"NBD server failed {request.describe()}: {p.error_text(error)}"
        if message:
            text += f": {message}"
        return NbdCommandError(text, error)

    def _receive_one(self) -> None:
        reader = self._reader
        head = reader.read(p.SIMPLE_REPLY.size)
        (magic,) = p.MAGIC32.unpack_from(head)
        if magic == p.SIMPLE_REPLY_MAGIC:
            simple = p.decode_simple_reply(head)
            request = self._lookup(simple.cookie)
            if simple.error:
                request.fail(self._command_error(request, simple.error))
            elif request.command == p.CMD_READ:
                assert request.buffer is not None
                reader.read_into(request.buffer)
                assert request.coverage is not None
                request.coverage.add(request.offset, request.length, "simple reply data")
            elif request.command == p.CMD_BLOCK_STATUS:
                raise NbdProtocolError("NBD server sent a simple reply to block status")
            self._complete(request)
            return
        if magic != p.STRUCTURED_REPLY_MAGIC:
            raise NbdProtocolError(f"bad NBD reply magic {magic:#010x}")
        chunk = p.decode_chunk_header(head + reader.read(p.CHUNK_HEADER.size - len(head)))
        request = self._lookup(chunk.cookie)
        rtype = chunk.reply_type
        if rtype == p.REPLY_TYPE_OFFSET_DATA and request.command == p.CMD_READ:
            if chunk.length < 8:
                raise NbdProtocolError("NBD_REPLY_TYPE_OFFSET_DATA chunk is too short")
            (data_offset,) = p.U64.unpack(reader.read(8))
            assert request.buffer is not None and request.coverage is not None
            n = chunk.length - 8
            start = request.coverage.add(data_offset, n, "data")
            reader.read_into(request.buffer[start : start + n])
        elif rtype == p.REPLY_TYPE_OFFSET_HOLE and request.command == p.CMD_READ:
            hole_offset, hole_len = p.decode_offset_hole(reader.read(chunk.length))
            assert request.buffer is not None and request.coverage is not None
            start = request.coverage.add(hole_offset, hole_len, "a hole")
            request.buffer[start : start + hole_len] = bytes(hole_len)
        elif rtype == p.REPLY_TYPE_BLOCK_STATUS and request.command == p.CMD_BLOCK_STATUS:
            context_id, extents = p.decode_block_status(reader.read(chunk.length))
            if context_id == request.context_id:
                request.extents = extents
        elif rtype in (p.REPLY_TYPE_ERROR, p.REPLY_TYPE_ERROR_OFFSET):
            err = p.decode_error_chunk(
                reader.read(chunk.length), rtype == p.REPLY_TYPE_ERROR_OFFSET
            )
            where = f" at offset {err.offset}" if err.offset is not None else ""
            request.fail(self._command_error(request, err.error, err.message + where))
        elif rtype == p.REPLY_TYPE_NONE:
            if chunk.length or not chunk.done:
                raise NbdProtocolError("NBD_REPLY_TYPE_NONE chunk is malformed")
        elif rtype & p.REPLY_TYPE_ERROR_BIT:
            data = reader.read(chunk.length)
            error = p.U32.unpack_from(data)[0] if len(data) >= 4 else p.EIO
            request.fail(self._command_error(request, error, f"reply type {rtype}"))
        else:
            raise NbdProtocolError(f"NBD server sent reply type {rtype} to {request.describe()}")
        if chunk.done:
            if request.error is None:
                gap = request.coverage.first_gap() if request.coverage is not None else None
                if gap is not None:
                    assert request.coverage is not None
                    request.fail(
                        NbdProtocolError(
                            f"NBD server answered {request.describe()} with "
                            f"{request.coverage.covered} bytes: {gap[1]} bytes at offset "
                            f"{gap[0]} were never sent"
                        )
                    )
                elif request.command == p.CMD_BLOCK_STATUS and not request.extents:
                    request.fail(
                        NbdProtocolError(f"NBD server returned no extents for {request.describe()}")
                    )
            self._complete(request)


def _fresh(error: NbdError) -> NbdError:
    """A new exception to raise for an error that may be shared by several requests."""
    if isinstance(error, NbdCommandError | NbdOptionError):
        return error
    copy = type(error)(str(error))
    copy.__cause__ = error.__cause__
    return copy


def _split(length: int, step: int) -> list[tuple[int, int]]:
    return [(pos, min(step, length - pos)) for pos in range(0, length, step)]


def _open_socket(address: str, timeout: float | None) -> socket.socket:
    family, target = _parse_address(address)
    try:
        if family == socket.AF_UNIX:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(target)
            except BaseException:
                sock.close()
                raise
        else:
            assert isinstance(target, tuple)
            sock = socket.create_connection(target, timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        raise NbdConnectionError(
            f"cannot connect to NBD server at {address}: {exc.strerror or exc}"
        ) from exc
    return sock


class _Handshake:
    """The fixed newstyle negotiation on a connected socket (blocking, with timeout)."""

    def __init__(self, sock: socket.socket, address: str, export_name: str) -> None:
        self.sock = sock
        self.address = address
        self.export_name = export_name
        self.no_zeroes = False
        self.structured = False
        self.contexts: dict[str, int] = {}
        self.info = p.ExportInfo(0, 0)
        self.block_sizes: p.BlockSizeInfo | None = None

    def run(self, meta_contexts: tuple[str, ...]) -> None:
        self.greet()
        self.structured = self.negotiate_structured()
        if meta_contexts:
            if not self.structured:
                raise NbdError(
                    f"NBD server {self.address} does not support structured replies, "
                    "needed for block status"
                )
            self.contexts = dict(
                (name, cid)
                for cid, name in self.meta_contexts_with_ids(p.OPT_SET_META_CONTEXT, meta_contexts)
            )
        if not self.go():
            self.export_name_fallback()

    # --- low level ------------------------------------------------------------------

    def _recv(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        try:
            while got < n:
                k = self.sock.recv_into(view[got:])
                if not k:
                    raise NbdConnectionError(
                        f"NBD server {self.address} closed the connection during the handshake"
                    )
                got += k
        except TimeoutError as exc:
            raise NbdConnectionError(
                f"NBD server {self.address} timed out during the handshake"
            ) from exc
        except OSError as exc:
            raise NbdConnectionError(
                f"NBD handshake with {self.address} failed: {exc.strerror or exc}"
            ) from exc
        return bytes(buf)

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise NbdConnectionError(
                f"NBD handshake with {self.address} failed: {exc.strerror or exc}"
            ) from exc

    def _reply(self, option: int) -> tuple[p.OptionReplyHeader, bytes]:
        header = p.decode_option_reply_header(self._recv(p.OPTION_REPLY_HEADER.size))
        data = self._recv(header.length) if header.length else b""
        if header.option != option:
            raise NbdProtocolError(
                f"NBD server answered {p.option_name(header.option)} to {p.option_name(option)}"
            )
        return header, data

    def _refused(self, option: int, header: p.OptionReplyHeader, data: bytes) -> NbdOptionError:
        reason = p.option_error_text(header.reply_type)
        message = p.decode_error_message(data)
        if option in (p.OPT_GO, p.OPT_INFO, p.OPT_EXPORT_NAME):
            text = f"NBD server refused export {self.export_name!r}: {reason}"
        else:
            text = f"NBD server refused {p.option_name(option)}: {reason}"
        if message:
            text += f" ({message})"
        return NbdOptionError(text, option, header.reply_type)

    # --- steps ------------------------------------------------------------------------

    def greet(self) -> None:
        flags = p.decode_greeting(self._recv(p.GREETING.size))
        if not flags & p.FLAG_FIXED_NEWSTYLE:
            raise NbdProtocolError(
                f"NBD server {self.address} does not support the fixed newstyle handshake"
            )
        client_flags = p.FLAG_C_FIXED_NEWSTYLE
        if flags & p.FLAG_NO_ZEROES:
            client_flags |= p.FLAG_C_NO_ZEROES
            self.no_zeroes = True
        self._send(p.encode_client_flags(client_flags))

    def negotiate_structured(self) -> bool:
        self._send(p.encode_option(p.OPT_STRUCTURED_REPLY))
        header, data = self._reply(p.OPT_STRUCTURED_REPLY)
        if header.reply_type == p.REP_ACK:
            return True
        if header.reply_type in (p.REP_ERR_UNSUP, p.REP_ERR_POLICY):
            return False
        if header.reply_type & p.REP_FLAG_ERROR:
            raise self._refused(p.OPT_STRUCTURED_REPLY, header, data)
        raise NbdProtocolError(f"unexpected reply {header.reply_type} to structured reply")

    def meta_contexts_with_ids(
        self, option: int, queries: tuple[str, ...]
    ) -> list[tuple[int, str]]:
        self._send(
            p.encode_option(option, p.encode_meta_context_request(self.export_name, queries))
        )
        found: list[tuple[int, str]] = []
        while True:
            header, data = self._reply(option)
            if header.reply_type == p.REP_ACK:
                return found
            if header.reply_type == p.REP_META_CONTEXT:
                found.append(p.decode_meta_context_reply(data))
            elif header.reply_type == p.REP_ERR_UNSUP:
                return []
            elif header.reply_type & p.REP_FLAG_ERROR:
                raise self._refused(option, header, data)
            else:
                raise NbdProtocolError(
                    f"unexpected reply {header.reply_type} to {p.option_name(option)}"
                )

    def meta_contexts(self, option: int, queries: tuple[str, ...]) -> list[str]:
        return [name for _, name in self.meta_contexts_with_ids(option, queries)]

    def go(self) -> bool:
        """NBD_OPT_GO; False if the server does not know the option."""
        data = p.encode_info_request(self.export_name, (p.INFO_BLOCK_SIZE,))
        self._send(p.encode_option(p.OPT_GO, data))
        got_export = False
        while True:
            header, payload = self._reply(p.OPT_GO)
            if header.reply_type == p.REP_ACK:
                if not got_export:
                    raise NbdProtocolError("NBD server finished NBD_OPT_GO without export info")
                return True
            if header.reply_type == p.REP_INFO:
                info = p.decode_info(payload)
                if isinstance(info, p.ExportInfo):
                    self.info = info
                    got_export = True
                elif isinstance(info, p.BlockSizeInfo):
                    self.block_sizes = info
            elif header.reply_type == p.REP_ERR_UNSUP:
                return False
            elif header.reply_type & p.REP_FLAG_ERROR:
                raise self._refused(p.OPT_GO, header, payload)
            else:
                raise NbdProtocolError(f"unexpected reply {header.reply_type} to NBD_OPT_GO")

    def export_name_fallback(self) -> None:
        self._send(p.encode_option(p.OPT_EXPORT_NAME, self.export_name.encode("utf-8")))
        try:
            data = self._recv(p.EXPORT_NAME_REPLY.size)
        except NbdConnectionError as exc:
            raise NbdOptionError(
                f"NBD server refused export {self.export_name!r} (it closed the connection)",
                p.OPT_EXPORT_NAME,
                p.REP_ERR_UNKNOWN,
            ) from exc
        self.info = p.decode_export_name_reply(data)
        if not self.no_zeroes:
            self._recv(p.EXPORT_NAME_ZEROES)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(p.encode_option(p.OPT_ABORT))
