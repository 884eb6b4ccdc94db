"""The asyncio NBD server (hypersdk.nbd.server) against real clients (nbdinfo, nbdcopy,
qemu-io, our own client) and against a raw socket that sends what no polite client does.

The backend here is a bytearray in memory: the repository-backed export has its own
tests (tests/access)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from hypersdk.access.serving import BackgroundServer, Listen
from hypersdk.errors import UsageError
from hypersdk.nbd import NbdClient
from hypersdk.nbd import protocol as p
from hypersdk.nbd.server import Piece

SIZE = 4 << 20
GRAIN = 64 * 1024


class MemoryBackend:
    """A disk in memory; a GRAIN-sized block of zeros reads as a hole."""

    def __init__(self, data: bytes, writable: bool = False) -> None:
        self.data = bytearray(data)
        self.writable = writable
        self.multi_conn = True
        self.preferred_block_size = GRAIN
        self.fail_at: int | None = None
        self.lock = threading.Lock()

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> Sequence[Piece]:
        if self.fail_at is not None and offset <= self.fail_at < offset + length:
            raise OSError(5, "injected read failure")
        out = []
        pos = offset
        while pos < offset + length:
            stop = min((pos // GRAIN + 1) * GRAIN, offset + length)
            chunk = bytes(self.data[pos:stop])
            out.append(Piece(stop - pos, None if not any(chunk) else chunk))
            pos = stop
        return out

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        pos = offset
        while pos < offset + length:
            stop = min((pos // GRAIN + 1) * GRAIN, offset + length)
            flags = 0 if any(self.data[pos:stop]) else p.STATE_HOLE | p.STATE_ZERO
            if out and out[-1][1] == flags:
                out[-1] = (out[-1][0] + stop - pos, flags)
            else:
                out.append((stop - pos, flags))
            pos = stop
        return out

    def write(self, offset: int, data: bytes) -> None:
        with self.lock:
            self.data[offset : offset + len(data)] = data

    def zero(self, offset: int, length: int) -> None:
        with self.lock:
            self.data[offset : offset + length] = bytes(length)

    def flush(self) -> None:
        pass


def _image() -> bytes:
    data = bytearray(SIZE)
    data[:GRAIN] = os.urandom(GRAIN)
    data[3 * GRAIN : 3 * GRAIN + 100] = b"x" * 100
    data[SIZE - GRAIN :] = os.urandom(GRAIN)
    return bytes(data)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[BackgroundServer, MemoryBackend, Path]]:
    backend = MemoryBackend(_image())
    sock = tmp_path / "nbd.sock"
    server = BackgroundServer(backend, Listen(socket=str(sock)))  # type: ignore[arg-type]
    server.start()
    try:
        yield server, backend, sock
    finally:
        server.stop()


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


def test_nbdinfo_sees_size_flags_and_holes(
    served: tuple[BackgroundServer, MemoryBackend, Path],
) -> None:
    server, _, sock = served
    assert server.uri == f"nbd+unix:///?socket={sock}"
    info = _run("nbdinfo", server.uri)
    assert f"export-size: {SIZE}" in info
    assert "is_read_only: true" in info and "can_multi_conn: true" in info
    assert "can_df: true" in info
    assert "base:allocation" in info
    mapped = [line.split() for line in _run("nbdinfo", "--map", server.uri).splitlines()]
    assert mapped[0][:3] == ["0", str(GRAIN), "0"]
    assert mapped[1][:3] == [str(GRAIN), str(2 * GRAIN), "3"]  # hole,zero
    assert _run("nbdinfo", "--list", server.uri).count("export=") == 1


def test_nbdcopy_and_two_clients_at_once(
    served: tuple[BackgroundServer, MemoryBackend, Path], tmp_path: Path
) -> None:
    server, backend, _ = served
    outs = [tmp_path / f"copy{i}.raw" for i in range(2)]
    procs = [
        subprocess.Popen(["nbdcopy", "--connections=2", "--requests=8", server.uri, str(o)])
        for o in outs
    ]
    for proc in procs:
        assert proc.wait(30) == 0
    for out in outs:
        assert out.read_bytes() == bytes(backend.data)


def test_parallel_reads_from_threads_on_one_connection(
    served: tuple[BackgroundServer, MemoryBackend, Path],
) -> None:
    _, backend, sock = served
    with NbdClient.connect(f"unix:{sock}", meta_contexts=("base:allocation",)) as client:
        assert client.size == SIZE and client.can_multi_conn
        results: dict[int, bytes] = {}

        def read(i: int) -> None:
            results[i] = client.pread(i * 100_000, 300_000)

        threads = [threading.Thread(target=read, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, got in results.items():
            assert got == bytes(backend.data[i * 100_000 : i * 100_000 + 300_000])
        extents = client.block_status("base:allocation", 0, SIZE)
        assert extents[0].flags == 0 and extents[1].flags == p.STATE_HOLE | p.STATE_ZERO


def test_writes_to_a_writable_backend_through_qemu_io(tmp_path: Path) -> None:
    backend = MemoryBackend(bytes(SIZE), writable=True)
    with BackgroundServer(backend, Listen(port=0)) as server:  # type: ignore[arg-type]
        assert server.uri.startswith("nbd://127.0.0.1:")
        _run(
            "qemu-io", "-f", "raw", "-c", "write -P 0x5a 4096 8192", "-c", "write -z 0 512",
            "-c", "flush", server.uri,
        )  # fmt: skip
    assert backend.data[4096 : 4096 + 8192] == b"\x5a" * 8192
    assert not any(backend.data[:4096])


# -- a raw socket: what the server must answer, and survive ---------------------------


class Raw:
    """A hand-driven client: fixed newstyle, optional structured replies."""

    def __init__(self, sock_path: Path) -> None:
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(10)
        self.s.connect(str(sock_path))
        p.decode_greeting(self.recv(18))
        self.s.sendall(p.encode_client_flags(p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES))

    def recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            part = self.s.recv(n - len(buf))
            if not part:
                raise ConnectionError("closed")
            buf += part
        return buf

    def option(self, option: int, data: bytes = b"") -> tuple[int, bytes]:
        self.s.sendall(p.encode_option(option, data))
        head = p.decode_option_reply_header(self.recv(20))
        return head.reply_type, self.recv(head.length)

    def go(self, structured: bool) -> None:
        if structured:
            assert self.option(p.OPT_STRUCTURED_REPLY)[0] == p.REP_ACK
            req = p.encode_meta_context_request("", (p.CONTEXT_BASE_ALLOCATION,))
            assert self.option(p.OPT_SET_META_CONTEXT, req)[0] == p.REP_META_CONTEXT
            assert self.recv(20)  # the ACK
        kind, _ = self.option(p.OPT_GO, p.encode_info_request(""))
        assert kind == p.REP_INFO
        assert p.decode_option_reply_header(self.recv(20)).reply_type == p.REP_ACK

    def request(
        self, command: int, offset: int, length: int, payload: bytes = b"", flags: int = 0
    ) -> None:
        self.s.sendall(p.encode_request(flags, command, 7, offset, length) + payload)

    def chunk(self) -> tuple[p.ChunkHeader, bytes]:
        head = p.decode_chunk_header(self.recv(20))
        return head, self.recv(head.length)


def test_option_errors_do_not_end_the_handshake(
    served: tuple[BackgroundServer, MemoryBackend, Path],
) -> None:
    _, _, sock = served
    raw = Raw(sock)
    assert raw.option(99)[0] == p.REP_ERR_UNSUP
    assert raw.option(p.OPT_STARTTLS)[0] == p.REP_ERR_UNSUP
    ctx = p.encode_meta_context_request("", (p.CONTEXT_BASE_ALLOCATION,))
    assert raw.option(p.OPT_SET_META_CONTEXT, ctx)[0] == p.REP_ERR_INVALID  # not structured
    assert raw.option(p.OPT_GO, p.encode_info_request("nope"))[0] == p.REP_ERR_UNKNOWN
    assert raw.option(p.OPT_GO, b"\x00\x00")[0] == p.REP_ERR_INVALID  # truncated
    assert raw.option(p.OPT_LIST, b"junk")[0] == p.REP_ERR_INVALID
    raw.go(structured=True)
    raw.request(p.CMD_READ, 0, 512)
    head, body = raw.chunk()
    assert head.reply_type == p.REPLY_TYPE_OFFSET_DATA and head.done and len(body) == 8 + 512
    kind, _ = Raw(sock).option(p.OPT_ABORT)
    assert kind == p.REP_ACK


def test_bad_requests_get_error_replies_and_the_connection_goes_on(
    served: tuple[BackgroundServer, MemoryBackend, Path],
) -> None:
    _, backend, sock = served
    raw = Raw(sock)
    raw.go(structured=True)
    cases = [
        (p.CMD_READ, SIZE - 10, 20, b"", 0, p.EINVAL),  # past the end
        (p.CMD_WRITE, 0, 4, b"abcd", 0, p.EPERM),  # read-only (payload consumed)
        (p.CMD_TRIM, 0, 4096, b"", 0, p.EPERM),
        (p.CMD_FLUSH, 0, 0, b"", 0, p.EINVAL),
        (42, 0, 512, b"", 0, p.EINVAL),  # unknown command
        (p.CMD_READ, 0, 512, b"", 1 << 9, p.EINVAL),  # unknown flag
        (p.CMD_READ, 0, 0, b"", 0, p.EINVAL),  # zero length
        (p.CMD_READ, 0, 64 << 20, b"", 0, p.EOVERFLOW),  # larger than the maximum
    ]
    for command, offset, length, payload, flags, error in cases:
        raw.request(command, offset, length, payload, flags)
        head, body = raw.chunk()
        assert head.done and head.reply_type == p.REPLY_TYPE_ERROR, command
        assert p.decode_error_chunk(body, with_offset=False).error == error, command
    backend.fail_at = 100
    raw.request(p.CMD_READ, 0, 512)
    head, body = raw.chunk()
    chunk = p.decode_error_chunk(body, with_offset=False)
    assert chunk.error == p.EIO and "injected" in chunk.message
    backend.fail_at = None
    raw.request(p.CMD_READ, GRAIN, GRAIN)  # a hole, as one chunk
    head, body = raw.chunk()
    assert head.reply_type == p.REPLY_TYPE_OFFSET_HOLE
    assert p.decode_offset_hole(body) == (GRAIN, GRAIN)
    raw.request(p.CMD_READ, 0, 3 * GRAIN, flags=p.CMD_FLAG_DF)  # data + hole: one chunk
    head, body = raw.chunk()
    assert head.done and head.reply_type == p.REPLY_TYPE_OFFSET_DATA
    assert body[8:] == bytes(backend.data[: 3 * GRAIN])


def test_simple_replies_without_structured_negotiation(
    served: tuple[BackgroundServer, MemoryBackend, Path],
) -> None:
    _, backend, sock = served
    raw = Raw(sock)
    raw.s.sendall(p.encode_option(p.OPT_EXPORT_NAME, b""))
    info = p.decode_export_name_reply(raw.recv(10))  # NO_ZEROES: no padding
    assert info.size == SIZE and info.transmission_flags & p.TFLAG_READ_ONLY
    assert not info.transmission_flags & p.TFLAG_SEND_DF  # DF needs structured replies
    raw.request(p.CMD_READ, GRAIN - 8, 16)
    reply = p.decode_simple_reply(raw.recv(16))
    assert reply.error == 0 and raw.recv(16) == bytes(backend.data[GRAIN - 8 : GRAIN + 8])
    raw.request(p.CMD_BLOCK_STATUS, 0, 512)  # no meta context: an error, not a crash
    assert p.decode_simple_reply(raw.recv(16)).error == p.EINVAL


def test_a_broken_client_does_not_hurt_the_server(
    served: tuple[BackgroundServer, MemoryBackend, Path],
) -> None:
    server, backend, sock = served
    raw = Raw(sock)
    raw.go(structured=False)
    raw.s.sendall(b"\xde\xad" * 14)  # bad request magic: the server drops this client
    assert raw.s.recv(1) == b""
    half = socket.socket(socket.AF_UNIX)
    half.connect(str(sock))
    half.close()  # gone in the middle of the greeting
    with NbdClient.connect(f"unix:{sock}") as client:
        assert client.pread(0, 4096) == bytes(backend.data[:4096])
    assert server.active_connections <= 1


def test_stop_removes_the_socket_and_refuses_an_existing_path(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    server = BackgroundServer(MemoryBackend(bytes(4096)), Listen(socket=str(sock)))  # type: ignore[arg-type]
    server.start()
    assert sock.exists() and (sock.stat().st_mode & 0o777) == 0o600
    client = NbdClient.connect(f"unix:{sock}")
    server.stop()
    assert not sock.exists()
    client.close()
    taken = tmp_path / "taken"
    taken.write_text("mine")
    with pytest.raises(UsageError):
        BackgroundServer(MemoryBackend(bytes(4096)), Listen(socket=str(taken))).start()  # type: ignore[arg-type]
    assert taken.read_text() == "mine"


class BigBackend(MemoryBackend):
    """1 GiB of one repeated 32 MiB buffer; counts the reads it served."""

    BLOCK = memoryview(bytes(range(256)) * (32 * 4096))

    def __init__(self) -> None:
        super().__init__(b"")
        self.reads = 0

    @property
    def size(self) -> int:
        return 1 << 30

    def read(self, offset: int, length: int) -> Sequence[Piece]:
        self.reads += 1
        return [Piece(length, self.BLOCK[:length])]


def test_a_client_that_does_not_read_replies_cannot_pile_up_memory(tmp_path: Path) -> None:
    backend = BigBackend()
    sock = tmp_path / "big.sock"
    with BackgroundServer(backend, Listen(socket=str(sock))):  # type: ignore[arg-type]
        raw = Raw(sock)
        raw.go(structured=True)
        size = 32 << 20
        for i in range(12):
            raw.s.sendall(p.encode_request(0, p.CMD_READ, i, i * size, size))
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            time.sleep(0.05)
        # 64 MiB in flight at most: two 32 MiB reads (a third may be waiting to start)
        assert backend.reads <= 3
        seen = set()
        while len(seen) < 12:
            head, body = raw.chunk()
            assert head.reply_type == p.REPLY_TYPE_OFFSET_DATA and len(body) == 8 + size
            seen.add(head.cookie)
        assert backend.reads == 12
