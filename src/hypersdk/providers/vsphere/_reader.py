"""Read a datastore file with HTTPS Range requests on vSphere's ``/folder`` service.

``GET https://host/folder/<dir>/<name>-flat.vmdk?dcPath=<dc>&dsName=<ds>`` with the SOAP
session cookie, ``Range: bytes=a-b`` and ``Accept-Encoding: identity``. Every reply must
be ``206`` with a ``Content-Range`` of exactly ``bytes a-b/N`` where ``N`` (the file's
size) equals the disk's capacity, no content coding, and a body of exactly ``b-a+1``
bytes. Refused, never written at an offset: a ``200`` (the server ignored the Range), a
range other than the one asked, a total ``N`` other than the capacity (the file is not
the disk we were told of: another file, a flat file of another size, a proxy's page),
a total ``*`` (unknown size: a flat disk file always has one, so nothing can be proven
about it), and a compressed body (the range would count coded bytes). Transient failures
(connection errors, timeouts, 5xx) are retried with exponential backoff; a certificate
that does not verify is not transient and fails at once.

Speed: one :class:`FolderClient` per session holds one HTTP/1.1 keep-alive connection
per thread (per ``--parallel`` slot), reused by every request of that thread, so a TLS
handshake happens once per thread, not once per range. Bodies are read straight into a
preallocated buffer (stdlib ``http.client``: no per-chunk parsing objects, and the TLS
decryption runs without the GIL; the body one TLS record per call, with no Python file
layers in between). The engine asks for one block at a time; the reader
knows the session's read plan (the changed extents), so it fetches a run of planned
consecutive blocks with one large Range GET (a *segment*) and serves the blocks of the
run from it. A thread whose block is still arriving on another thread's segment fetches
the next planned segment meanwhile, so every connection stays busy. Memory is bounded:
at most ``max_segments`` segments live at once; a block that finds none free is read
with its own request. Blocks the engine reads in parts (sub-block patches of an
incremental, :meth:`HttpRangeReader.partial_blocks`) are left out of the segments, so
their unchanged bytes are never fetched.
"""

from __future__ import annotations

import bisect
import http.client
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode, urlsplit

from hypersdk.errors import ConnectionFailed, ProviderError
from hypersdk.providers.base import Extent

RETRIES = 4  # attempts in all
BACKOFF = 0.2  # seconds before the 2nd attempt; doubles
RCVBUF = 4 << 20  # bytes of socket receive buffer per connection
# Bytes of planned consecutive blocks fetched by one Range GET. A request has a fixed
# cost on the server (the lab's: about 0.5 ms of CPU, as much as streaming 0.8 MiB):
# 8 MiB ranges cut its share of the server's CPU by about a tenth against 4 MiB.
SEGMENT = 8 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def folder_url(netloc: str, dc_path: str, datastore: str, path: str) -> str:
    query = urlencode({"dcPath": dc_path, "dsName": datastore})
    return f"https://{netloc}/folder/{quote(path)}?{query}"


class _Transient(Exception):
    pass


def _cert_error(err: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate failure behind an error, if that is what it is."""
    seen: BaseException | None = err
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class FolderClient:
    """HTTP/1.1 keep-alive connections for one session: one per thread, each reused
    for every request that thread makes. Thread-safe: a connection is never shared."""

    def __init__(
        self,
        cookie: tuple[str, str],
        *,
        ssl_context: ssl.SSLContext,
        pool: int,
        timeout: float = 120.0,
        connect_timeout: float = 15.0,
    ) -> None:
        name, value = cookie
        # identity: a Range counts stored bytes; a coded body could not be checked.
        self.headers = {"Cookie": f"{name}={value}", "Accept-Encoding": "identity"}
        self.ssl_context = ssl_context
        self.pool = pool  # the expected number of threads (connections)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.connections = 0  # TCP connections opened (each HTTPS one is a TLS handshake)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[http.client.HTTPConnection] = set()
        self._closed = False

    def _connection(self, scheme: str, netloc: str) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection to ``netloc`` and whether it has served before."""
        conns: dict[tuple[str, str], http.client.HTTPConnection] | None = getattr(
            self._local, "conns", None
        )
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get((scheme, netloc))
        if conn is not None and conn.sock is not None:
            return conn, True
        if self._closed:
            raise ProviderError("the datastore HTTP client is closed")
        if scheme == "https":
            conn = http.client.HTTPSConnection(
                netloc, timeout=self.connect_timeout, context=self.ssl_context
            )
        elif scheme == "http":  # only for tests against a local server
            conn = http.client.HTTPConnection(netloc, timeout=self.connect_timeout)
        else:
            raise ProviderError(f"unsupported datastore URL scheme {scheme!r}")
        conn.connect()  # the TLS handshake, once for this thread
        assert conn.sock is not None
        # A receive buffer of several TLS records per wake-up: the reader drains it in
        # bursts (it shares the GIL); at the kernel's default it wakes up several
        # times as often and spends about a fifth more CPU per MiB (the kernel caps
        # the size at net.core.rmem_max).
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        conn.sock.settimeout(self.timeout)
        conns[(scheme, netloc)] = conn
        with self._lock:
            self.connections += 1
            self._open.add(conn)
        return conn, False

    def _drop(self, scheme: str, netloc: str) -> None:
        conns = getattr(self._local, "conns", {})
        conn = conns.pop((scheme, netloc), None)
        if conn is not None:
            conn.close()
            with self._lock:
                self._open.discard(conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._open = list(self._open), set()
        for conn in conns:
            conn.close()

    def __enter__(self) -> FolderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_client(
    cookie: tuple[str, str], *, ssl_context: ssl.SSLContext, pool: int, timeout: float = 120.0
) -> FolderClient:
    return FolderClient(cookie, ssl_context=ssl_context, pool=pool, timeout=timeout)


@dataclass(eq=False)
class _Segment:
    """Bytes ``start..end`` of the file, fetched by one thread with one Range GET."""

    start: int
    end: int
    buf: bytearray
    filled: int = 0  # bytes arrived so far, from start
    left: int = 0  # bytes not yet handed to a pread
    error: BaseException | None = None
    done: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)


class _Plan:
    """The blocks the engine will read, as sorted runs of consecutive block numbers,
    from the changed extents and the block size (``engine.plan``'s rule: a block a
    data extent touches is read, and so is one a zero extent covers only in part)."""

    def __init__(
        self,
        extents: Sequence[Extent] | None,
        capacity: int,
        block: int,
        skip: Iterable[int] = (),
    ) -> None:
        self.block = block
        nblocks = -(-capacity // block)
        spans: list[tuple[int, int]] = []
        if extents is None:
            spans.append((0, nblocks))
        else:
            for e in extents:
                if e.length <= 0:
                    continue
                first, last = e.offset // block, (e.end - 1) // block
                if not e.zero:
                    spans.append((first, last + 1))
                    continue
                for b in {first, last}:
                    if e.offset > b * block or e.end < min((b + 1) * block, capacity):
                        spans.append((b, b + 1))
        spans.sort()
        cuts = sorted(set(skip))
        self.starts: list[int] = []
        self.ends: list[int] = []
        for a, b in spans:
            if self.ends and a <= self.ends[-1]:
                self.ends[-1] = max(self.ends[-1], b)
            else:
                self.starts.append(a)
                self.ends.append(b)
        if cuts:
            self._cut(cuts)

    def _cut(self, cuts: list[int]) -> None:
        """Take the blocks ``cuts`` out of the runs."""
        starts: list[int] = []
        ends: list[int] = []
        for a, b in zip(self.starts, self.ends, strict=True):
            i = bisect.bisect_left(cuts, a)
            while i < len(cuts) and cuts[i] < b:
                if cuts[i] > a:
                    starts.append(a)
                    ends.append(cuts[i])
                a = cuts[i] + 1
                i += 1
            if a < b:
                starts.append(a)
                ends.append(b)
        self.starts, self.ends = starts, ends

    def run_end(self, block: int) -> int | None:
        """The end (exclusive) of the run holding ``block``, or None if not planned."""
        i = bisect.bisect_right(self.starts, block) - 1
        if i >= 0 and block < self.ends[i]:
            return self.ends[i]
        return None

    def next_planned(self, block: int) -> int | None:
        """The first planned block at or after ``block``."""
        i = bisect.bisect_right(self.starts, block) - 1
        if i >= 0 and block < self.ends[i]:
            return block
        if i + 1 < len(self.starts):
            return self.starts[i + 1]
        return None


class HttpRangeReader:
    """``DiskReader`` of one flat disk file; safe to call from several threads.

    ``extents`` is the session's read plan (``FrozenDisk.changed``; ``None``: every
    block); without ``coalesce`` every pread is its own Range GET."""

    # Reads here cost a network round trip and the hypervisor's disk: an incremental
    # reads only the changed bytes of a block changed in small parts (engine.patch).
    patch_threshold = 0.5
    # A Range GET of its own costs about as much as reading this many more bytes in a
    # running one: a round trip and the server's work (1-2 ms on a 1 GbE link; in the
    # lab 0.5 ms of server CPU, against 1.8 ms a MiB on both ends).
    request_bytes = 128 << 10

    def __init__(
        self,
        client: FolderClient,
        url: str,
        capacity: int,
        disk_key: str,
        *,
        extents: Sequence[Extent] | None = None,
        coalesce: bool = True,
        segment: int = SEGMENT,
        max_segments: int | None = None,
        retries: int = RETRIES,
        backoff: float = BACKOFF,
    ) -> None:
        self._client = client
        self.url = url
        parts = urlsplit(url)
        self._scheme, self._netloc = parts.scheme, parts.netloc
        self._target = parts.path + (f"?{parts.query}" if parts.query else "")
        self._capacity = capacity
        self._key = disk_key
        self._retries = max(1, retries)
        self._backoff = backoff
        self._extents = list(extents) if extents is not None else None
        self._coalesce = coalesce
        self._segment = segment
        # one arriving per connection, and two being handed out (6 x 8 MiB at -p 4)
        self._max_segments = max_segments or max(1, client.pool) + 2
        self._free: list[bytearray] = []  # buffers of consumed segments
        self._plan: _Plan | None = None
        self._segments: dict[int, _Segment] = {}  # by start offset
        self._starts: list[int] = []  # sorted keys of _segments
        self._frontier = 0  # end of the furthest segment made so far
        self._lock = threading.Lock()
        self.requests = 0  # HTTP requests sent (retries included)
        self.bytes = 0  # bytes received in accepted replies

    def partial_blocks(self, block: int, blocks: Iterable[int]) -> None:
        """The engine will read these blocks in parts, not whole: leave them out of the
        segments, so that their unchanged bytes are never fetched. Called before the
        first read."""
        # The plan is made now: a part read first (a 64 KiB CBT area at a multiple of
        # 64 KiB, say) must not be taken for the engine's block size.
        with self._lock:
            self._plan = _Plan(self._extents, self._capacity, block, blocks)

    # -- the DiskReader API --------------------------------------------------------
    def pread(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ProviderError(f"disk {self._key}: bad read {offset}+{length}")
        end = min(offset + length, self._capacity)
        if end <= offset:
            return bytes(length)
        data = self._from_segment(offset, end - offset) if self._coalesce else None
        if data is None:
            buf = bytearray(end - offset)
            self._get(offset, memoryview(buf))
            data = bytes(buf)
        if len(data) < length:  # past the end of the disk reads as zeros
            data += bytes(length - len(data))
        return data

    # -- coalescing ----------------------------------------------------------------
    def _plan_for(self, offset: int, length: int) -> _Plan | None:
        plan = self._plan
        if plan is None:
            # The engine's block size is the length of any read not at the disk's end
            # (a power of two, at a multiple of it); anything else is read as asked.
            if offset + length >= self._capacity or length & (length - 1) or offset % length:
                return None
            with self._lock:
                if self._plan is None:
                    self._plan = _Plan(self._extents, self._capacity, length)
                plan = self._plan
        if offset % plan.block or (length != plan.block and offset + length != self._capacity):
            return None  # not the engine's grid: read it as asked
        return plan

    def _find(self, offset: int) -> _Segment | None:
        i = bisect.bisect_right(self._starts, offset) - 1
        if i >= 0:
            seg = self._segments[self._starts[i]]
            if offset < seg.end:
                return seg
        return None

    def _new_segment(self, plan: _Plan, block: int) -> _Segment | None:
        """A segment from ``block`` to the end of its run (at most ``segment`` bytes);
        called with the lock held."""
        if len(self._segments) >= self._max_segments:
            return None
        run_end = plan.run_end(block)
        if run_end is None:
            return None
        start = block * plan.block
        nblocks = max(1, min(run_end - block, self._segment // plan.block))
        if nblocks * plan.block > self._segment:
            return None  # a block larger than a segment: read it as asked
        end = min(start + nblocks * plan.block, self._capacity)
        # Buffers are reused: a fresh one costs a page fault per 4 KiB as it fills.
        buf = self._free.pop() if self._free else bytearray(self._segment)
        seg = _Segment(start, end, buf, left=end - start)
        self._segments[start] = seg
        bisect.insort(self._starts, start)
        self._frontier = max(self._frontier, end)
        return seg

    def _forget(self, seg: _Segment) -> None:
        """Drop a segment from the table (lock held)."""
        if self._segments.get(seg.start) is seg:
            del self._segments[seg.start]
            self._starts.remove(seg.start)

    def _from_segment(self, offset: int, length: int) -> bytes | None:
        plan = self._plan_for(offset, length)
        if plan is None:
            return None
        mine: _Segment | None = None
        ahead: _Segment | None = None
        with self._lock:
            seg = self._find(offset)
            if seg is None:
                if offset < self._frontier:
                    return None  # served or dropped already: read it as asked
                seg = mine = self._new_segment(plan, offset // plan.block)
                if seg is None:
                    self._frontier = max(self._frontier, offset + length)
                    return None
            elif not seg.done:
                # Its bytes are on their way on another connection: keep this one busy
                # with the next planned run meanwhile.
                nxt = plan.next_planned(-(-self._frontier // plan.block))
                if nxt is not None:
                    ahead = self._new_segment(plan, nxt)
        if offset + length > seg.end:
            return None
        if mine is not None:
            self._fill(mine)
        if ahead is not None:
            self._fill(ahead)
        with seg.cond:
            while seg.filled < offset + length - seg.start and seg.error is None:
                seg.cond.wait()
            err = seg.error
        if err is not None and seg.filled < offset + length - seg.start:
            if isinstance(err, ProviderError):
                raise type(err)(str(err)) from err
            raise ProviderError(f"disk {self._key}: {err}") from err
        a = offset - seg.start
        data = bytes(memoryview(seg.buf)[a : a + length])  # one copy, not two
        with self._lock:
            seg.left -= length
            if seg.left <= 0:
                self._forget(seg)
                self._free.append(seg.buf)  # every copy out of it is done
        return data

    def _fill(self, seg: _Segment) -> None:
        """Fetch a segment; its waiters see the bytes as they arrive."""

        def progress(n: int) -> None:
            with seg.cond:
                seg.filled = n
                seg.cond.notify_all()

        try:
            self._get(seg.start, memoryview(seg.buf)[: seg.end - seg.start], progress)
        except BaseException as err:
            with self._lock:
                self._forget(seg)  # a later read of its blocks asks again
            with seg.cond:
                seg.error = err  # its waiters raise it
                seg.cond.notify_all()
            if not isinstance(err, Exception):
                raise  # Ctrl-C and the like stop this thread too
            return
        with seg.cond:
            seg.filled = seg.end - seg.start
            seg.done = True
            seg.cond.notify_all()

    # -- one range, with retries ---------------------------------------------------
    def _get(
        self, offset: int, into: memoryview, progress: Callable[[int], None] | None = None
    ) -> None:
        last_err = ""
        for attempt in range(self._retries):
            if attempt:
                time.sleep(self._backoff * 2 ** (attempt - 1))
            try:
                try:
                    self._once(offset, into, progress, fresh=False)
                except _Stale:
                    self._once(offset, into, progress, fresh=True)
                return
            except _Transient as err:
                last_err = str(err)
        raise ConnectionFailed(
            f"disk {self._key}: reading {len(into)} bytes at offset {offset} failed "
            f"{self._retries} times: {last_err}"
        )

    def _once(
        self,
        offset: int,
        into: memoryview,
        progress: Callable[[int], None] | None,
        *,
        fresh: bool,
    ) -> None:
        length = len(into)
        last = offset + length - 1
        client = self._client
        with self._lock:
            self.requests += 1
        reused = False
        try:
            if fresh:
                client._drop(self._scheme, self._netloc)
            conn, reused = client._connection(self._scheme, self._netloc)
            conn.putrequest("GET", self._target, skip_accept_encoding=True)
            for name, value in client.headers.items():
                conn.putheader(name, value)
            conn.putheader("Range", f"bytes={offset}-{last}")
            conn.endheaders()
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as err:
            client._drop(self._scheme, self._netloc)
            cert = _cert_error(err)
            if cert is not None:
                raise ConnectionFailed(
                    f"disk {self._key}: cannot verify the TLS certificate of the datastore "
                    f"server ({cert.verify_message}); trust its CA with --ca-file or pass "
                    "--insecure"
                ) from err
            if reused and isinstance(
                err, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
            ):
                # The server closed the idle keep-alive connection: ask again at once.
                with self._lock:
                    self.requests -= 1
                raise _Stale from err
            raise _Transient(f"{type(err).__name__}: {err}") from err
        try:
            self._check(resp, offset, last)
            if resp.length is not None and resp.length > length:
                raise ProviderError(
                    f"disk {self._key}: the reply to bytes={offset}-{last} is longer than "
                    "the range: refusing it"
                )
            got = self._body(conn, resp, into, progress)
            if got != length:
                raise _Transient(f"short body: {got} of {length} bytes")
            if not resp.isclosed() and resp.read(1):
                raise ProviderError(
                    f"disk {self._key}: the reply to bytes={offset}-{last} is longer than "
                    "the range: refusing it"
                )
            resp.close()  # the body is read: the connection serves the next request
        except (OSError, http.client.HTTPException) as err:
            client._drop(self._scheme, self._netloc)
            raise _Transient(f"{type(err).__name__}: {err}") from err
        except BaseException:
            client._drop(self._scheme, self._netloc)
            raise
        if resp.will_close:
            client._drop(self._scheme, self._netloc)
        with self._lock:
            self.bytes += length

    @staticmethod
    def _body(
        conn: http.client.HTTPConnection,
        resp: http.client.HTTPResponse,
        into: memoryview,
        progress: Callable[[int], None] | None,
    ) -> int:
        """Read the body into ``into``; returns the bytes read (short if it ended early)."""
        length = len(into)
        step = max(1 << 20, length // 8)
        got = told = 0
        direct = resp.length == length and not resp.chunked and conn.sock is not None
        read: Callable[[int, memoryview], int] | None = None
        if direct and length:
            # What the header read buffered first, then straight from the socket: one
            # call per TLS record instead of three layers of Python file objects. On
            # TLS, the SSL object's own read (what SSLSocket.recv_into calls after two
            # Python frames of checks); its errors (EOF mid-body included) are OSErrors.
            assert resp.fp is not None and conn.sock is not None
            got = resp.fp.readinto1(into)
            sslobj = getattr(conn.sock, "_sslobj", None)
            if sslobj is not None:
                read = sslobj.read
            else:
                sock = conn.sock
                read = lambda n, view: sock.recv_into(view, n)  # noqa: E731
        while got < length:
            n = read(length - got, into[got:]) if read is not None else resp.readinto(into[got:])
            if not n:
                break
            got += n
            if progress is not None and got - told >= step:
                progress(got)
                told = got
        if direct:
            resp.length = length - got  # what http.client still expects of the body
        return got

    def _check(self, resp: http.client.HTTPResponse, offset: int, last: int) -> None:
        status = resp.status
        if status >= 500 or status == 429:
            raise _Transient(f"HTTP {status}")
        if status == 200:
            raise ProviderError(
                f"disk {self._key}: the server ignored the Range request (HTTP 200, whole "
                "file): refusing to use it"
            )
        if status in (401, 403):
            raise ConnectionFailed(
                f"disk {self._key}: the datastore refused the read (HTTP {status}): "
                "the vSphere session expired or lacks Datastore.Browse"
            )
        if status == 404:
            raise ProviderError(f"disk {self._key}: datastore file not found (HTTP 404)")
        if status != 206:
            raise ProviderError(f"disk {self._key}: unexpected HTTP {status} for a Range read")
        content_range = resp.getheader("Content-Range")
        m = _CONTENT_RANGE.match((content_range or "").strip())
        if not m or int(m.group(1)) != offset or int(m.group(2)) != last:
            raise ProviderError(
                f"disk {self._key}: Content-Range {content_range!r} "
                f"does not match the request bytes={offset}-{last}"
            )
        total = m.group(3)
        if total == "*":
            raise ProviderError(
                f"disk {self._key}: the server did not say the datastore file's size "
                "(Content-Range total '*'): cannot check that it is the disk, refusing it"
            )
        if int(total) != self._capacity:
            raise ProviderError(
                f"disk {self._key}: the datastore file is {int(total)} bytes long by its "
                f"Content-Range, the disk {self._capacity} bytes: refusing to read a file "
                "that is not the disk"
            )
        coding = (resp.getheader("Content-Encoding") or "identity").strip().lower()
        if coding not in ("", "identity"):
            raise ProviderError(
                f"disk {self._key}: the server sent a {coding}-coded body although "
                "Accept-Encoding was identity: refusing to use it"
            )


class _Stale(Exception):
    pass
