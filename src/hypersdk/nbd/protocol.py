"""NBD wire format: constants and pure encode/decode of every structure we use.

No sockets here: a client and a (future) server both build on these functions. The
reference is the NBD protocol document (``doc/proto.md`` in NetworkBlockDevice/nbd).
All integers are unsigned and big-endian (network byte order); strings are UTF-8
without a terminator, preceded by their length where the structure needs one.

Handshake (fixed newstyle only; oldstyle servers are refused)::

    S: u64 NBDMAGIC 0x4e42444d41474943 ("NBDMAGIC")
    S: u64 IHAVEOPT 0x49484156454f5054
    S: u16 handshake flags     FIXED_NEWSTYLE=1, NO_ZEROES=2
    C: u32 client flags        C_FIXED_NEWSTYLE=1, C_NO_ZEROES=2

Options, repeated until one of them ends the handshake (GO, EXPORT_NAME, ABORT)::

    C: u64 IHAVEOPT, u32 option, u32 length, data[length]
    S: u64 0x0003e889045565a9, u32 option, u32 reply type, u32 length, data[length]

    option data                                  reply data
    EXPORT_NAME(1)  name (no length prefix)      no option reply: u64 size, u16 flags,
                                                 then 124 zero bytes unless NO_ZEROES
    STRUCTURED_REPLY(8)  (empty)                 ACK(1)
    INFO(6) / GO(7)  u32 len, name, u16 n,       INFO(3): u16 info type, then
                     n * u16 info type           EXPORT(0): u64 size, u16 flags
                                                 BLOCK_SIZE(3): u32 min, u32 preferred,
                                                                u32 max
                                                 ...then ACK(1)
    LIST_META_CONTEXT(9) / SET_META_CONTEXT(10)  META_CONTEXT(4): u32 id, name
                     u32 len, name, u32 n,       ...then ACK(1)
                     n * (u32 len, query)
    any option                                   errors have bit 31 set: ERR_UNSUP,
                                                 ERR_POLICY, ERR_INVALID, ... with
                                                 an optional UTF-8 message as data

Transmission (after GO or EXPORT_NAME)::

    C: request (28 bytes): u32 0x25609513, u16 command flags, u16 type, u64 cookie,
                           u64 offset, u32 length, then length bytes for WRITE only
    S: simple reply (16 bytes): u32 0x67446698, u32 error, u64 cookie,
                           then the data of a successful READ if structured replies
                           were not negotiated
    S: structured reply chunk (20 bytes): u32 0x668e33ef, u16 flags (DONE=1),
                           u16 type, u64 cookie, u32 length, then length bytes:
        NONE(0)            (empty; only with DONE)
        OFFSET_DATA(1)     u64 offset, data
        OFFSET_HOLE(2)     u64 offset, u32 hole length (reads as zeros)
        BLOCK_STATUS(5)    u32 context id, n * (u32 extent length, u32 flags)
        ERROR(32769)       u32 error, u16 message length, message
        ERROR_OFFSET(32770) u32 error, u16 message length, message, u64 offset

    A command's reply is complete after a simple reply or a chunk with DONE set.
    Replies may come in any order; the cookie matches them to requests.
    The content chunks (OFFSET_DATA, OFFSET_HOLE) of a read each describe at least one
    byte inside the request and never overlap; a successful read covers the whole
    request (:class:`ReadCoverage` checks this, so no byte is left unset).
    DISC has no reply: the server closes the connection.

Error values are the Linux errno numbers of EPERM, EIO, ENOMEM, EINVAL, ENOSPC,
EOVERFLOW, ENOTSUP and ESHUTDOWN, whatever the host's own numbering.

Exceptions (all derive from :class:`hypersdk.errors.NbdError`)::

    NbdError
    ├── NbdConnectionError   cannot connect, connection lost or timed out
    ├── NbdProtocolError     the peer broke the protocol (bad magic, bad lengths)
    ├── NbdOptionError       the server refused an option during the handshake
    └── NbdCommandError      the server answered a command with an error value
"""

from __future__ import annotations

import bisect
import struct
import sys
from array import array
from dataclasses import dataclass
from typing import Final

from hypersdk.errors import NbdError

# --- magics -------------------------------------------------------------------------

NBDMAGIC: Final = 0x4E42444D41474943
IHAVEOPT: Final = 0x49484156454F5054
OLDSTYLE_MAGIC: Final = 0x00420281861253
OPTION_REPLY_MAGIC: Final = 0x0003E889045565A9
REQUEST_MAGIC: Final = 0x25609513
SIMPLE_REPLY_MAGIC: Final = 0x67446698
STRUCTURED_REPLY_MAGIC: Final = 0x668E33EF

# --- handshake flags ----------------------------------------------------------------

FLAG_FIXED_NEWSTYLE: Final = 1 << 0
FLAG_NO_ZEROES: Final = 1 << 1
FLAG_C_FIXED_NEWSTYLE: Final = 1 << 0
FLAG_C_NO_ZEROES: Final = 1 << 1

# --- transmission flags -------------------------------------------------------------

TFLAG_HAS_FLAGS: Final = 1 << 0
TFLAG_READ_ONLY: Final = 1 << 1
TFLAG_SEND_FLUSH: Final = 1 << 2
TFLAG_SEND_FUA: Final = 1 << 3
TFLAG_ROTATIONAL: Final = 1 << 4
TFLAG_SEND_TRIM: Final = 1 << 5
TFLAG_SEND_WRITE_ZEROES: Final = 1 << 6
TFLAG_SEND_DF: Final = 1 << 7
TFLAG_CAN_MULTI_CONN: Final = 1 << 8
TFLAG_SEND_RESIZE: Final = 1 << 9
TFLAG_SEND_CACHE: Final = 1 << 10
TFLAG_SEND_FAST_ZERO: Final = 1 << 11

# --- options ------------------------------------------------------------------------

OPT_EXPORT_NAME: Final = 1
OPT_ABORT: Final = 2
OPT_LIST: Final = 3
OPT_STARTTLS: Final = 5
OPT_INFO: Final = 6
OPT_GO: Final = 7
OPT_STRUCTURED_REPLY: Final = 8
OPT_LIST_META_CONTEXT: Final = 9
OPT_SET_META_CONTEXT: Final = 10

OPTION_NAMES: Final = {
    OPT_EXPORT_NAME: "NBD_OPT_EXPORT_NAME",
    OPT_ABORT: "NBD_OPT_ABORT",
    OPT_LIST: "NBD_OPT_LIST",
    OPT_STARTTLS: "NBD_OPT_STARTTLS",
    OPT_INFO: "NBD_OPT_INFO",
    OPT_GO: "NBD_OPT_GO",
    OPT_STRUCTURED_REPLY: "NBD_OPT_STRUCTURED_REPLY",
    OPT_LIST_META_CONTEXT: "NBD_OPT_LIST_META_CONTEXT",
    OPT_SET_META_CONTEXT: "NBD_OPT_SET_META_CONTEXT",
}

# --- option replies -----------------------------------------------------------------

REP_ACK: Final = 1
REP_SERVER: Final = 2
REP_INFO: Final = 3
REP_META_CONTEXT: Final = 4

REP_FLAG_ERROR: Final = 1 << 31
REP_ERR_UNSUP: Final = REP_FLAG_ERROR | 1
REP_ERR_POLICY: Final = REP_FLAG_ERROR | 2
REP_ERR_INVALID: Final = REP_FLAG_ERROR | 3
REP_ERR_PLATFORM: Final = REP_FLAG_ERROR | 4
REP_ERR_TLS_REQD: Final = REP_FLAG_ERROR | 5
REP_ERR_UNKNOWN: Final = REP_FLAG_ERROR | 6
REP_ERR_SHUTDOWN: Final = REP_FLAG_ERROR | 7
REP_ERR_BLOCK_SIZE_REQD: Final = REP_FLAG_ERROR | 8
REP_ERR_TOO_BIG: Final = REP_FLAG_ERROR | 9
REP_ERR_EXT_HEADER_REQD: Final = REP_FLAG_ERROR | 10

OPTION_ERROR_TEXT: Final = {
    REP_ERR_UNSUP: "option not supported by the server",
    REP_ERR_POLICY: "forbidden by server policy",
    REP_ERR_INVALID: "invalid option data",
    REP_ERR_PLATFORM: "not supported on the server's platform",
    REP_ERR_TLS_REQD: "server requires TLS",
    REP_ERR_UNKNOWN: "unknown export",
    REP_ERR_SHUTDOWN: "server is shutting down",
    REP_ERR_BLOCK_SIZE_REQD: "server requires the client to honour block sizes",
    REP_ERR_TOO_BIG: "request or reply too large",
    REP_ERR_EXT_HEADER_REQD: "server requires extended headers",
}

INFO_EXPORT: Final = 0
INFO_NAME: Final = 1
INFO_DESCRIPTION: Final = 2
INFO_BLOCK_SIZE: Final = 3

# --- commands -----------------------------------------------------------------------

CMD_READ: Final = 0
CMD_WRITE: Final = 1
CMD_DISC: Final = 2
CMD_FLUSH: Final = 3
CMD_TRIM: Final = 4
CMD_CACHE: Final = 5
CMD_WRITE_ZEROES: Final = 6
CMD_BLOCK_STATUS: Final = 7

COMMAND_NAMES: Final = {
    CMD_READ: "read",
    CMD_WRITE: "write",
    CMD_DISC: "disconnect",
    CMD_FLUSH: "flush",
    CMD_TRIM: "trim",
    CMD_CACHE: "cache",
    CMD_WRITE_ZEROES: "write-zeroes",
    CMD_BLOCK_STATUS: "block-status",
}

CMD_FLAG_FUA: Final = 1 << 0
CMD_FLAG_NO_HOLE: Final = 1 << 1
CMD_FLAG_DF: Final = 1 << 2
CMD_FLAG_REQ_ONE: Final = 1 << 3
CMD_FLAG_FAST_ZERO: Final = 1 << 4

# --- structured replies -------------------------------------------------------------

REPLY_FLAG_DONE: Final = 1 << 0

REPLY_TYPE_NONE: Final = 0
REPLY_TYPE_OFFSET_DATA: Final = 1
REPLY_TYPE_OFFSET_HOLE: Final = 2
REPLY_TYPE_BLOCK_STATUS: Final = 5
REPLY_TYPE_ERROR_BIT: Final = 1 << 15
REPLY_TYPE_ERROR: Final = REPLY_TYPE_ERROR_BIT | 1
REPLY_TYPE_ERROR_OFFSET: Final = REPLY_TYPE_ERROR_BIT | 2

# --- error values (Linux numbering, fixed by the protocol) --------------------------

EPERM: Final = 1
EIO: Final = 5
ENOMEM: Final = 12
EINVAL: Final = 22
ENOSPC: Final = 28
EOVERFLOW: Final = 75
ENOTSUP: Final = 95
ESHUTDOWN: Final = 108

ERROR_TEXT: Final = {
    EPERM: "EPERM (operation not permitted)",
    EIO: "EIO (input/output error)",
    ENOMEM: "ENOMEM (server out of memory)",
    EINVAL: "EINVAL (invalid argument)",
    ENOSPC: "ENOSPC (no space left on device)",
    EOVERFLOW: "EOVERFLOW (value too large)",
    ENOTSUP: "ENOTSUP (operation not supported)",
    ESHUTDOWN: "ESHUTDOWN (server is shutting down)",
}

# --- meta contexts ------------------------------------------------------------------

CONTEXT_BASE_ALLOCATION: Final = "base:allocation"
CONTEXT_DIRTY_BITMAP_PREFIX: Final = "qemu:dirty-bitmap:"

STATE_HOLE: Final = 1
"""base:allocation: the extent is not allocated (a hole)."""
STATE_ZERO: Final = 2
"""base:allocation: the extent reads as zeros."""
STATE_DIRTY: Final = 1
"""qemu:dirty-bitmap:NAME: the extent changed since the bitmap was created."""

# --- limits -------------------------------------------------------------------------

MAX_REQUEST_PAYLOAD: Final = 32 * 1024 * 1024
"""Largest read/write payload a portable client sends without the server's consent."""
MAX_STRING: Final = 4096
MAX_OPTION_REPLY: Final = 16 * 1024 * 1024
EXPORT_NAME_ZEROES: Final = 124

# --- exceptions ---------------------------------------------------------------------


class NbdConnectionError(NbdError):
    """Cannot connect to the server, or the connection was lost or timed out."""


class NbdProtocolError(NbdError):
    """The peer sent something the NBD protocol does not allow."""


class NbdOptionError(NbdError):
    """The server refused an option during the handshake."""

    def __init__(self, message: str, option: int, reply_type: int) -> None:
        super().__init__(message)
        self.option = option
        self.reply_type = reply_type


class NbdCommandError(NbdError):
    """The server answered a command with an NBD error value."""

    def __init__(self, message: str, error: int) -> None:
        super().__init__(message)
        self.error = error


def error_text(error: int) -> str:
    """One phrase for an NBD error value, e.g. ``"EIO (input/output error)"``."""
    return ERROR_TEXT.get(error, f"unknown NBD error {error}")


def option_name(option: int) -> str:
    return OPTION_NAMES.get(option, f"option {option}")


def option_error_text(reply_type: int) -> str:
    return OPTION_ERROR_TEXT.get(reply_type, f"error reply {reply_type & ~REP_FLAG_ERROR}")


def command_name(command: int) -> str:
    return COMMAND_NAMES.get(command, f"command {command}")


# --- records ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockStatusExtent:
    """A range of the export and its flags in one meta context."""

    offset: int
    length: int
    flags: int


@dataclass(frozen=True, slots=True)
class OptionReplyHeader:
    option: int
    reply_type: int
    length: int


@dataclass(frozen=True, slots=True)
class ExportInfo:
    """NBD_INFO_EXPORT, or the reply to NBD_OPT_EXPORT_NAME."""

    size: int
    transmission_flags: int


@dataclass(frozen=True, slots=True)
class BlockSizeInfo:
    """NBD_INFO_BLOCK_SIZE."""

    minimum: int
    preferred: int
    maximum: int


@dataclass(frozen=True, slots=True)
class OtherInfo:
    """An NBD_REP_INFO this module does not interpret (name, description, ...)."""

    info_type: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Request:
    flags: int
    command: int
    cookie: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class SimpleReply:
    error: int
    cookie: int


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    """The header of one structured reply chunk."""

    flags: int
    reply_type: int
    cookie: int
    length: int

    @property
    def done(self) -> bool:
        return bool(self.flags & REPLY_FLAG_DONE)


@dataclass(frozen=True, slots=True)
class ErrorChunk:
    error: int
    message: str
    offset: int | None


_U32_ARRAY: Final = "I" if array("I").itemsize == 4 else "L"

# --- struct layouts -----------------------------------------------------------------

GREETING: Final = struct.Struct(">QQH")  # NBDMAGIC, IHAVEOPT, handshake flags
CLIENT_FLAGS: Final = struct.Struct(">I")
OPTION_HEADER: Final = struct.Struct(">QII")  # IHAVEOPT, option, length
OPTION_REPLY_HEADER: Final = struct.Struct(">QIII")  # magic, option, type, length
EXPORT_NAME_REPLY: Final = struct.Struct(">QH")  # size, transmission flags
REQUEST: Final = struct.Struct(">IHHQQI")
SIMPLE_REPLY: Final = struct.Struct(">IIQ")
CHUNK_HEADER: Final = struct.Struct(">IHHQI")
MAGIC32: Final = struct.Struct(">I")
U16: Final = struct.Struct(">H")
U32: Final = struct.Struct(">I")
U64: Final = struct.Struct(">Q")
OFFSET_HOLE: Final = struct.Struct(">QI")
INFO_EXPORT_LAYOUT: Final = struct.Struct(">HQH")
INFO_BLOCK_SIZE_LAYOUT: Final = struct.Struct(">HIII")
ERROR_CHUNK_PREFIX: Final = struct.Struct(">IH")


def _check_string(value: str, what: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > MAX_STRING:
        raise NbdProtocolError(f"{what} is longer than {MAX_STRING} bytes")
    return data


def _take(data: bytes | memoryview, pos: int, n: int, what: str) -> bytes:
    if pos + n > len(data):
        raise NbdProtocolError(f"{what} is truncated")
    return bytes(data[pos : pos + n])


# --- handshake ----------------------------------------------------------------------


def encode_greeting(handshake_flags: int) -> bytes:
    return GREETING.pack(NBDMAGIC, IHAVEOPT, handshake_flags)


def decode_greeting(data: bytes) -> int:
    """Return the handshake flags of a newstyle greeting (18 bytes); refuse others."""
    if len(data) != GREETING.size:
        raise NbdProtocolError(f"NBD greeting must be {GREETING.size} bytes, got {len(data)}")
    magic, style, flags = GREETING.unpack(data)
    if magic != NBDMAGIC:
        raise NbdProtocolError(f"not an NBD server (bad magic {magic:#018x})")
    if style == OLDSTYLE_MAGIC:
        raise NbdProtocolError("NBD server speaks the oldstyle protocol, which is not supported")
    if style != IHAVEOPT:
        raise NbdProtocolError(f"NBD server sent an unknown handshake style {style:#018x}")
    return int(flags)


def encode_client_flags(flags: int) -> bytes:
    return CLIENT_FLAGS.pack(flags)


def decode_client_flags(data: bytes) -> int:
    return int(CLIENT_FLAGS.unpack(data)[0])


def encode_option(option: int, data: bytes = b"") -> bytes:
    return OPTION_HEADER.pack(IHAVEOPT, option, len(data)) + data


def decode_option_header(data: bytes) -> tuple[int, int]:
    """Return (option, length) of a client's option header (16 bytes)."""
    magic, option, length = OPTION_HEADER.unpack(data)
    if magic != IHAVEOPT:
        raise NbdProtocolError(f"bad NBD option magic {magic:#018x}")
    return int(option), int(length)


def encode_option_reply(option: int, reply_type: int, data: bytes = b"") -> bytes:
    return OPTION_REPLY_HEADER.pack(OPTION_REPLY_MAGIC, option, reply_type, len(data)) + data


def decode_option_reply_header(data: bytes) -> OptionReplyHeader:
    magic, option, reply_type, length = OPTION_REPLY_HEADER.unpack(data)
    if magic != OPTION_REPLY_MAGIC:
        raise NbdProtocolError(f"bad NBD option reply magic {magic:#018x}")
    if length > MAX_OPTION_REPLY:
        raise NbdProtocolError(f"NBD option reply of {length} bytes is too large")
    return OptionReplyHeader(int(option), int(reply_type), int(length))


def encode_info_request(export_name: str, info_types: tuple[int, ...] = ()) -> bytes:
    """Data of NBD_OPT_INFO and NBD_OPT_GO."""
    name = _check_string(export_name, "export name")
    parts = [U32.pack(len(name)), name, U16.pack(len(info_types))]
    parts.extend(U16.pack(t) for t in info_types)
    return b"".join(parts)


def decode_info_request(data: bytes) -> tuple[str, tuple[int, ...]]:
    (name_len,) = U32.unpack(_take(data, 0, 4, "NBD_OPT_GO data"))
    name = _take(data, 4, name_len, "NBD_OPT_GO export name")
    pos = 4 + name_len
    (count,) = U16.unpack(_take(data, pos, 2, "NBD_OPT_GO data"))
    pos += 2
    if len(data) != pos + 2 * count:
        raise NbdProtocolError("NBD_OPT_GO data has a wrong length")
    types = tuple(int(U16.unpack_from(data, pos + 2 * i)[0]) for i in range(count))
    return name.decode("utf-8", "replace"), types


def encode_info_export(info: ExportInfo) -> bytes:
    return INFO_EXPORT_LAYOUT.pack(INFO_EXPORT, info.size, info.transmission_flags)


def encode_info_block_size(info: BlockSizeInfo) -> bytes:
    return INFO_BLOCK_SIZE_LAYOUT.pack(INFO_BLOCK_SIZE, info.minimum, info.preferred, info.maximum)


def decode_info(data: bytes) -> ExportInfo | BlockSizeInfo | OtherInfo:
    """Decode the data of an NBD_REP_INFO reply."""
    (info_type,) = U16.unpack(_take(data, 0, 2, "NBD_REP_INFO"))
    if info_type == INFO_EXPORT:
        if len(data) != INFO_EXPORT_LAYOUT.size:
            raise NbdProtocolError("NBD_INFO_EXPORT has a wrong length")
        _, size, flags = INFO_EXPORT_LAYOUT.unpack(data)
        return ExportInfo(int(size), int(flags))
    if info_type == INFO_BLOCK_SIZE:
        if len(data) != INFO_BLOCK_SIZE_LAYOUT.size:
            raise NbdProtocolError("NBD_INFO_BLOCK_SIZE has a wrong length")
        _, minimum, preferred, maximum = INFO_BLOCK_SIZE_LAYOUT.unpack(data)
        return BlockSizeInfo(int(minimum), int(preferred), int(maximum))
    return OtherInfo(int(info_type), bytes(data[2:]))


def encode_meta_context_request(export_name: str, queries: tuple[str, ...]) -> bytes:
    """Data of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT."""
    name = _check_string(export_name, "export name")
    parts = [U32.pack(len(name)), name, U32.pack(len(queries))]
    for query in queries:
        q = _check_string(query, "meta context query")
        parts += [U32.pack(len(q)), q]
    return b"".join(parts)


def decode_meta_context_request(data: bytes) -> tuple[str, tuple[str, ...]]:
    (name_len,) = U32.unpack(_take(data, 0, 4, "meta context request"))
    name = _take(data, 4, name_len, "meta context request")
    pos = 4 + name_len
    (count,) = U32.unpack(_take(data, pos, 4, "meta context request"))
    pos += 4
    queries = []
    for _ in range(count):
        (qlen,) = U32.unpack(_take(data, pos, 4, "meta context query"))
        queries.append(_take(data, pos + 4, qlen, "meta context query").decode("utf-8", "replace"))
        pos += 4 + qlen
    if pos != len(data):
        raise NbdProtocolError("meta context request has trailing bytes")
    return name.decode("utf-8", "replace"), tuple(queries)


def encode_meta_context_reply(context_id: int, name: str) -> bytes:
    return U32.pack(context_id) + _check_string(name, "meta context name")


def decode_meta_context_reply(data: bytes) -> tuple[int, str]:
    (context_id,) = U32.unpack(_take(data, 0, 4, "NBD_REP_META_CONTEXT"))
    return int(context_id), bytes(data[4:]).decode("utf-8", "replace")


def decode_error_message(data: bytes) -> str:
    """The optional human-readable message of an option error reply."""
    return bytes(data).decode("utf-8", "replace").strip()


def encode_export_name_reply(info: ExportInfo, no_zeroes: bool) -> bytes:
    data = EXPORT_NAME_REPLY.pack(info.size, info.transmission_flags)
    return data if no_zeroes else data + bytes(EXPORT_NAME_ZEROES)


def decode_export_name_reply(data: bytes) -> ExportInfo:
    """Decode the first 10 bytes of the reply to NBD_OPT_EXPORT_NAME."""
    size, flags = EXPORT_NAME_REPLY.unpack(data)
    return ExportInfo(int(size), int(flags))


# --- transmission -------------------------------------------------------------------


def encode_request(flags: int, command: int, cookie: int, offset: int, length: int) -> bytes:
    return REQUEST.pack(REQUEST_MAGIC, flags, command, cookie, offset, length)


def decode_request(data: bytes) -> Request:
    magic, flags, command, cookie, offset, length = REQUEST.unpack(data)
    if magic != REQUEST_MAGIC:
        raise NbdProtocolError(f"bad NBD request magic {magic:#010x}")
    return Request(int(flags), int(command), int(cookie), int(offset), int(length))


def encode_simple_reply(error: int, cookie: int) -> bytes:
    return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)


def decode_simple_reply(data: bytes) -> SimpleReply:
    magic, error, cookie = SIMPLE_REPLY.unpack(data)
    if magic != SIMPLE_REPLY_MAGIC:
        raise NbdProtocolError(f"bad NBD simple reply magic {magic:#010x}")
    return SimpleReply(int(error), int(cookie))


def encode_chunk_header(flags: int, reply_type: int, cookie: int, length: int) -> bytes:
    return CHUNK_HEADER.pack(STRUCTURED_REPLY_MAGIC, flags, reply_type, cookie, length)


def decode_chunk_header(data: bytes) -> ChunkHeader:
    magic, flags, reply_type, cookie, length = CHUNK_HEADER.unpack(data)
    if magic != STRUCTURED_REPLY_MAGIC:
        raise NbdProtocolError(f"bad NBD structured reply magic {magic:#010x}")
    return ChunkHeader(int(flags), int(reply_type), int(cookie), int(length))


def encode_offset_data(offset: int, data: bytes) -> bytes:
    return U64.pack(offset) + data


def encode_offset_hole(offset: int, length: int) -> bytes:
    return OFFSET_HOLE.pack(offset, length)


def decode_offset_hole(data: bytes) -> tuple[int, int]:
    if len(data) != OFFSET_HOLE.size:
        raise NbdProtocolError("NBD_REPLY_TYPE_OFFSET_HOLE has a wrong length")
    offset, length = OFFSET_HOLE.unpack(data)
    return int(offset), int(length)


class ReadCoverage:
    """The byte ranges that the content chunks of one structured read reply covered.

    A server may answer a read with any number of OFFSET_DATA and OFFSET_HOLE chunks in
    any order. Counting their bytes is not enough: two overlapping chunks and a gap add
    up to the right total while part of the caller's buffer keeps stale bytes. Each
    chunk is checked against the ranges seen so far; ranges that touch are merged, so
    a reply in order stays one range.
    """

    __slots__ = ("_ends", "_starts", "length", "offset")

    def __init__(self, offset: int, length: int) -> None:
        self.offset = offset
        self.length = length
        self._starts: list[int] = []  # sorted, relative to offset; disjoint, not touching
        self._ends: list[int] = []

    def add(self, offset: int, length: int, what: str) -> int:
        """Record a chunk of ``length`` bytes at export ``offset``; return its start in
        the request. Raises NbdProtocolError if it is empty, leaves the request or
        overlaps an earlier chunk."""
        start = offset - self.offset
        end = start + length
        if length <= 0:
            raise NbdProtocolError(f"NBD server sent an empty {what} chunk at offset {offset}")
        if start < 0 or end > self.length:
            raise NbdProtocolError(
                f"NBD server sent {what} of {length} bytes at offset {offset}, outside "
                f"the read of {self.length} bytes at offset {self.offset}"
            )
        i = bisect.bisect_right(self._starts, start)
        if (i and self._ends[i - 1] > start) or (i < len(self._starts) and self._starts[i] < end):
            raise NbdProtocolError(
                f"NBD server sent {what} of {length} bytes at offset {offset}, overlapping "
                f"an earlier chunk of the read of {self.length} bytes at offset {self.offset}"
            )
        joins_left = i > 0 and self._ends[i - 1] == start
        joins_right = i < len(self._starts) and self._starts[i] == end
        if joins_left and joins_right:
            self._ends[i - 1] = self._ends[i]
            del self._starts[i], self._ends[i]
        elif joins_left:
            self._ends[i - 1] = end
        elif joins_right:
            self._starts[i] = start
        else:
            self._starts.insert(i, start)
            self._ends.insert(i, end)
        return start

    @property
    def covered(self) -> int:
        """How many bytes of the request the chunks covered."""
        return sum(self._ends) - sum(self._starts)

    def complete(self) -> bool:
        return self._starts == [0] and self._ends == [self.length]

    def first_gap(self) -> tuple[int, int] | None:
        """The first uncovered (export offset, length), or None when all is covered."""
        pos = 0
        for start, end in zip(self._starts, self._ends, strict=True):
            if start > pos:
                break
            pos = end
        if pos >= self.length:
            return None
        nxt = next((s for s in self._starts if s > pos), self.length)
        return self.offset + pos, nxt - pos


def encode_error_chunk(error: int, message: str, offset: int | None = None) -> bytes:
    msg = _check_string(message, "error message")
    data = ERROR_CHUNK_PREFIX.pack(error, len(msg)) + msg
    return data if offset is None else data + U64.pack(offset)


def decode_error_chunk(data: bytes, with_offset: bool) -> ErrorChunk:
    """Decode NBD_REPLY_TYPE_ERROR (or _ERROR_OFFSET when ``with_offset``)."""
    error, msg_len = ERROR_CHUNK_PREFIX.unpack(_take(data, 0, 6, "NBD error chunk"))
    message = _take(data, 6, msg_len, "NBD error chunk message")
    pos = 6 + msg_len
    offset = None
    if with_offset:
        (offset,) = U64.unpack(_take(data, pos, 8, "NBD error chunk offset"))
        pos += 8
    if pos != len(data):
        raise NbdProtocolError("NBD error chunk has a wrong length")
    if error == 0:
        raise NbdProtocolError("NBD error chunk carries error value 0")
    return ErrorChunk(int(error), message.decode("utf-8", "replace").strip(), offset)


def encode_block_status(context_id: int, extents: list[tuple[int, int]]) -> bytes:
    """Payload of NBD_REPLY_TYPE_BLOCK_STATUS: extents are (length, flags) pairs."""
    descriptors = array(_U32_ARRAY, (v for extent in extents for v in extent))
    if sys.byteorder == "little":
        descriptors.byteswap()
    return U32.pack(context_id) + descriptors.tobytes()


def decode_block_status(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """Return (context id, [(length, flags), ...]) of an NBD_REPLY_TYPE_BLOCK_STATUS."""
    if len(data) < 12 or (len(data) - 4) % 8:
        raise NbdProtocolError(f"NBD block status payload of {len(data)} bytes is malformed")
    (context_id,) = U32.unpack_from(data, 0)
    descriptors = array(_U32_ARRAY)
    descriptors.frombytes(data[4:])
    if sys.byteorder == "little":
        descriptors.byteswap()
    return int(context_id), list(zip(descriptors[0::2], descriptors[1::2], strict=True))
