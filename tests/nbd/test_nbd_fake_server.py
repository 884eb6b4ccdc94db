"""NbdClient against a scripted server built on protocol.py, for behaviour that real
servers do not show on demand: no NBD_OPT_GO, simple replies only, misbehaviour."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hypersdk.errors import NbdError
from hypersdk.nbd import NbdClient, NbdProtocolError
from hypersdk.nbd import protocol as p

SIZE = 1024 * 1024
Handler = Callable[[socket.socket, p.Request], None]


def recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        got = conn.recv(n - len(data))
        if not got:
            raise EOFError
        data += got
    return data


def content(offset: int, length: int) -> bytes:
    return bytes((offset + i) % 251 for i in range(length))


class FakeServer:
    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        go: bool = True,
        structured: bool = True,
        no_zeroes: bool = True,
        size: int = SIZE,
    ) -> None:
        self.handler = handler
        self.size = size
        self.go, self.structured, self.no_zeroes = go, structured, no_zeroes
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.listener.settimeout(10)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            try:
                if self._handshake(conn):
                    while True:
                        request = p.decode_request(recv_exact(conn, p.REQUEST.size))
                        if request.command == p.CMD_DISC:
                            return
                        self.handler(conn, request)
            except (EOFError, OSError):
                return

    def _handshake(self, conn: socket.socket) -> bool:
        flags = p.FLAG_FIXED_NEWSTYLE | (p.FLAG_NO_ZEROES if self.no_zeroes else 0)
        conn.sendall(p.encode_greeting(flags))
        client_flags = p.decode_client_flags(recv_exact(conn, 4))
        info = p.ExportInfo(self.size, p.TFLAG_HAS_FLAGS | p.TFLAG_SEND_FLUSH)
        while True:
            option, length = p.decode_option_header(recv_exact(conn, 16))
            data = recv_exact(conn, length) if length else b""
            if option == p.OPT_STRUCTURED_REPLY and self.structured:
                conn.sendall(p.encode_option_reply(option, p.REP_ACK))
            elif option == p.OPT_SET_META_CONTEXT and self.structured:
                _, queries = p.decode_meta_context_request(data)
                if "base:allocation" in queries:
                    reply = p.encode_meta_context_reply(7, "base:allocation")
                    conn.sendall(p.encode_option_reply(option, p.REP_META_CONTEXT, reply))
                conn.sendall(p.encode_option_reply(option, p.REP_ACK))
            elif option == p.OPT_GO and self.go:
                conn.sendall(p.encode_option_reply(option, p.REP_INFO, p.encode_info_export(info)))
                conn.sendall(p.encode_option_reply(option, p.REP_ACK))
                return True
            elif option == p.OPT_EXPORT_NAME:
                no_zeroes = bool(client_flags & p.FLAG_C_NO_ZEROES)
                conn.sendall(p.encode_export_name_reply(info, no_zeroes))
                return True
            elif option == p.OPT_ABORT:
                return False
            else:
                conn.sendall(p.encode_option_reply(option, p.REP_ERR_UNSUP, b"not here"))

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=10)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., str]]:
    started: list[FakeServer] = []

    def start(handler: Handler, **kwargs: Any) -> str:
        path = tmp_path / f"fake{len(started)}.sock"
        started.append(FakeServer(path, handler, **kwargs))
        return str(path)

    yield start
    for server in started:
        server.close()


def simple_read(conn: socket.socket, req: p.Request) -> None:
    reply = p.encode_simple_reply(0, req.cookie)
    if req.command == p.CMD_READ:
        reply += content(req.offset, req.length)
    conn.sendall(reply)


def scattered_read(conn: socket.socket, req: p.Request) -> None:
    """Answer a read with a hole and two data chunks, out of order."""
    if req.command != p.CMD_READ:
        conn.sendall(p.encode_simple_reply(0, req.cookie))
        return
    third = req.length // 3
    a, b = req.offset + third, req.offset + 2 * third
    second = content(b, req.offset + req.length - b)
    chunks = [
        (p.REPLY_TYPE_OFFSET_DATA, p.encode_offset_data(b, second)),
        (p.REPLY_TYPE_OFFSET_HOLE, p.encode_offset_hole(req.offset, third)),
        (p.REPLY_TYPE_OFFSET_DATA, p.encode_offset_data(a, content(a, b - a))),
    ]
    for i, (rtype, payload) in enumerate(chunks):
        flags = p.REPLY_FLAG_DONE if i == len(chunks) - 1 else 0
        conn.sendall(p.encode_chunk_header(flags, rtype, req.cookie, len(payload)) + payload)


@pytest.mark.parametrize("no_zeroes", [True, False])
def test_export_name_fallback_and_simple_replies(
    serve: Callable[..., str], no_zeroes: bool
) -> None:
    sock = serve(simple_read, go=False, structured=False, no_zeroes=no_zeroes)
    with NbdClient.connect(sock) as client:
        assert client.size == SIZE
        assert not client.structured_replies
        assert client.can_flush and not client.read_only
        assert client.pread(1000, 70000) == content(1000, 70000)
        client.flush()


def test_meta_context_needs_structured_replies(serve: Callable[..., str]) -> None:
    sock = serve(simple_read, structured=False)
    with pytest.raises(NbdError, match="does not support structured"):
        NbdClient.connect(sock, meta_contexts=("base:allocation",))


def test_structured_read_out_of_order_with_hole(serve: Callable[..., str]) -> None:
    sock = serve(scattered_read)
    with NbdClient.connect(sock) as client:
        length = 3 * 40000 + 2
        expected = bytes(40000) + content(40000, length - 40000)
        assert client.pread(0, length) == expected
        # a hole must come out as zeros even where an earlier read left data behind
        assert client.pread(50, length) == bytes(40000) + content(40050, length - 40000)


def test_block_status_that_stops_advancing(serve: Callable[..., str]) -> None:
    def handler(conn: socket.socket, req: p.Request) -> None:
        payload = p.encode_block_status(7, [(0, 0)])
        conn.sendall(
            p.encode_chunk_header(p.REPLY_FLAG_DONE, p.REPLY_TYPE_BLOCK_STATUS, req.cookie, 12)
            + payload
        )

    sock = serve(handler)
    with NbdClient.connect(sock, meta_contexts=("base:allocation",)) as client:
        assert client.meta_contexts == {"base:allocation": 7}
        with pytest.raises(NbdProtocolError, match="stopped advancing"):
            client.block_status("base:allocation", 0, SIZE)


def test_block_status_of_a_huge_disk_is_pipelined_and_resumed(
    serve: Callable[..., str],
) -> None:
    """A 62 TiB export: requests as large as 32 bits allow (not 1 GiB: 63,488 round
    trips), several sent before the first answer, and a short answer asked again from
    where it stopped, so the extents cover the range exactly once."""
    size = 62 << 40
    asked: list[tuple[int, int]] = []
    queued: list[bool] = []  # whether a next request was waiting when one was answered
    data = (5 << 40) + 12345  # where the disk holds data: one extent

    def handler(conn: socket.socket, req: p.Request) -> None:
        asked.append((req.offset, req.length))
        # wait (at most 2 s) for the next request: a client that sends one at a time
        # never sends it before this answer
        queued.append(bool(select.select([conn], [], [], 2.0 if len(asked) == 1 else 0)[0]))
        end = req.offset + min(req.length, 3 << 30)  # never more than 3 GiB: short answers
        extents, pos = [], req.offset
        for start, stop, flags in ((0, data, 3), (data, data + (1 << 20), 0), (data, size, 3)):
            s, t = max(pos, start), min(end, stop)
            if t > s:
                extents.append((t - s, flags))
                pos = t
        payload = p.encode_block_status(7, extents)
        header = p.encode_chunk_header(
            p.REPLY_FLAG_DONE, p.REPLY_TYPE_BLOCK_STATUS, req.cookie, len(payload)
        )
        conn.sendall(header + payload)

    sock = serve(handler, size=size)
    with NbdClient.connect(sock, meta_contexts=("base:allocation",)) as client:
        span = 16 << 40  # a quarter of the disk keeps the scripted server quick
        got = client.block_status("base:allocation", 4 << 40, span)
    assert [(e.offset, e.length, e.flags) for e in got] == [
        (4 << 40, data - (4 << 40), 3),
        (data, 1 << 20, 0),
        (data + (1 << 20), (20 << 40) - data - (1 << 20), 3),
    ]
    assert max(n for _, n in asked) > 1 << 30 and all(n < 1 << 32 for _, n in asked)
    assert len(asked) < 2 * span // (3 << 30)  # 4 GiB requests, each answered in two
    assert queued[0]  # the second request came before the first answer


def test_short_read_reply_is_an_error(serve: Callable[..., str]) -> None:
    def handler(conn: socket.socket, req: p.Request) -> None:
        payload = p.encode_offset_data(req.offset, content(req.offset, req.length - 1))
        header = p.encode_chunk_header(
            p.REPLY_FLAG_DONE, p.REPLY_TYPE_OFFSET_DATA, req.cookie, len(payload)
        )
        conn.sendall(header + payload)

    sock = serve(handler)
    with NbdClient.connect(sock) as client, pytest.raises(NbdProtocolError, match="with 99 bytes"):
        client.pread(0, 100)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (lambda req: b"\xde\xad\xbe\xef" + bytes(12), "bad NBD reply magic"),
        (lambda req: p.encode_simple_reply(0, req.cookie + 1000), "unknown cookie"),
    ],
)
def test_broken_reply_fails_the_connection(
    serve: Callable[..., str], reply: Callable[[p.Request], bytes], message: str
) -> None:
    sock = serve(lambda conn, req: conn.sendall(reply(req)))
    with NbdClient.connect(sock) as client:
        with pytest.raises(NbdProtocolError, match=message):
            client.pread(0, 10)
        with pytest.raises(NbdProtocolError, match=message):
            client.pread(0, 10)  # the client stays failed, it does not hang


def send_chunks(conn: socket.socket, cookie: int, chunks: list[tuple[int, bytes]]) -> None:
    for i, (rtype, payload) in enumerate(chunks):
        flags = p.REPLY_FLAG_DONE if i == len(chunks) - 1 else 0
        conn.sendall(p.encode_chunk_header(flags, rtype, cookie, len(payload)) + payload)


def data(offset: int, length: int) -> tuple[int, bytes]:
    return p.REPLY_TYPE_OFFSET_DATA, p.encode_offset_data(offset, content(offset, length))


def hole(offset: int, length: int) -> tuple[int, bytes]:
    return p.REPLY_TYPE_OFFSET_HOLE, p.encode_offset_hole(offset, length)


# Each script answers a read of 100 bytes at offset 1000 in a way the protocol forbids.
BAD_READ_REPLIES = {
    # 80 of 100 bytes: bytes 1050..1070 would keep whatever the buffer held
    "partial": ([data(1000, 50), hole(1070, 30)], "20 bytes at offset 1050 were never sent"),
    # 50 + 50 = 100 bytes, but twice the first half and never the second
    "overlap": ([data(1000, 50), hole(1000, 50)], "overlapping an earlier chunk"),
    "overlap inside": ([hole(1000, 100), data(1040, 10)], "overlapping an earlier chunk"),
    "outside after": ([data(1000, 90), hole(1090, 20)], "outside the read of 100 bytes"),
    "outside before": ([hole(990, 20), data(1010, 90)], "outside the read of 100 bytes"),
    "empty chunk": ([data(1000, 100), data(1100, 0)], "empty data chunk"),
}


@pytest.mark.parametrize("case", sorted(BAD_READ_REPLIES))
def test_read_reply_must_cover_the_request_exactly_once(
    serve: Callable[..., str], case: str
) -> None:
    """A non-conforming server never leaves stale bytes in the caller's buffer: a reply
    whose chunks leave a gap, overlap or leave the request fails the read."""
    chunks, message = BAD_READ_REPLIES[case]

    def handler(conn: socket.socket, req: p.Request) -> None:
        assert (req.offset, req.length) == (1000, 100)
        send_chunks(conn, req.cookie, chunks)

    sock = serve(handler)
    buffer = bytearray(b"\xee" * 100)  # what a previous read left in a reused buffer
    with NbdClient.connect(sock) as client, pytest.raises(NbdProtocolError, match=message):
        client.pread_into(1000, buffer)


def test_read_reply_in_many_chunks_any_order(serve: Callable[..., str]) -> None:
    """Chunks that tile the request in any order, touching each other, are accepted."""
    pieces = [(1000 + i * 10, 10) for i in range(10)]
    order = [3, 0, 9, 1, 2, 8, 4, 6, 5, 7]
    chunks = [hole(*pieces[i]) if i % 3 == 0 else data(*pieces[i]) for i in order]

    def handler(conn: socket.socket, req: p.Request) -> None:
        send_chunks(conn, req.cookie, chunks)

    sock = serve(handler)
    expected = b"".join(bytes(10) if i % 3 == 0 else content(1000 + i * 10, 10) for i in range(10))
    buffer = bytearray(b"\xee" * 100)
    with NbdClient.connect(sock) as client:
        client.pread_into(1000, buffer)
    assert bytes(buffer) == expected


def test_read_coverage_merges_ranges() -> None:
    cov = p.ReadCoverage(1000, 100)
    assert cov.first_gap() == (1000, 100)
    assert cov.add(1050, 10, "data") == 50
    assert cov.add(1070, 30, "data") == 70
    assert cov.first_gap() == (1000, 50)
    assert cov.add(1000, 50, "data") == 0
    assert cov.first_gap() == (1060, 10) and cov.covered == 90 and not cov.complete()
    cov.add(1060, 10, "a hole")
    assert cov.complete() and cov.first_gap() is None and cov.covered == 100
