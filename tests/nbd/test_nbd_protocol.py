"""Pure encode/decode of protocol.py, the public surface, address parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import hypersdk.nbd
from hypersdk.errors import NbdError
from hypersdk.nbd import protocol as p
from hypersdk.nbd.client import _parse_address

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
names = st.text(max_size=40).filter(lambda s: "\x00" not in s)


def test_public_api_is_pinned() -> None:
    assert hypersdk.nbd.__all__ == [
        "CONTEXT_BASE_ALLOCATION",
        "CONTEXT_DIRTY_BITMAP_PREFIX",
        "STATE_DIRTY",
        "STATE_HOLE",
        "STATE_ZERO",
        "BlockStatusExtent",
        "NbdClient",
        "NbdCommandError",
        "NbdConnectionError",
        "NbdOptionError",
        "NbdPool",
        "NbdProtocolError",
    ]
    assert (hypersdk.nbd.STATE_HOLE, hypersdk.nbd.STATE_ZERO, hypersdk.nbd.STATE_DIRTY) == (1, 2, 1)
    for name in ("NbdCommandError", "NbdConnectionError", "NbdOptionError", "NbdProtocolError"):
        assert issubclass(getattr(hypersdk.nbd, name), NbdError)


def test_block_status_extent_is_frozen() -> None:
    extent = hypersdk.nbd.BlockStatusExtent(0, 4096, 3)
    with pytest.raises(AttributeError):
        extent.flags = 0  # type: ignore[misc]


def test_greeting() -> None:
    data = p.encode_greeting(p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES)
    assert data[:8] == b"NBDMAGIC" and data[8:16] == b"IHAVEOPT" and len(data) == 18
    assert p.decode_greeting(data) == 3
    with pytest.raises(p.NbdProtocolError, match="not an NBD server"):
        p.decode_greeting(b"HTTP/1.1" + data[8:])
    oldstyle = data[:8] + (0x00420281861253).to_bytes(8, "big") + data[16:]
    with pytest.raises(p.NbdProtocolError, match="oldstyle"):
        p.decode_greeting(oldstyle)
    with pytest.raises(p.NbdProtocolError, match="18 bytes"):
        p.decode_greeting(data[:10])


@given(u32, st.binary(max_size=64))
def test_option_round_trip(option: int, data: bytes) -> None:
    encoded = p.encode_option(option, data)
    assert p.decode_option_header(encoded[:16]) == (option, len(data))
    assert encoded[16:] == data


@given(u32, u32, st.binary(max_size=64))
def test_option_reply_round_trip(option: int, reply_type: int, data: bytes) -> None:
    encoded = p.encode_option_reply(option, reply_type, data)
    assert p.decode_option_reply_header(encoded[:20]) == p.OptionReplyHeader(
        option, reply_type, len(data)
    )


def test_bad_option_magics() -> None:
    with pytest.raises(p.NbdProtocolError, match="option magic"):
        p.decode_option_header(bytes(16))
    with pytest.raises(p.NbdProtocolError, match="option reply magic"):
        p.decode_option_reply_header(bytes(20))


@given(names, st.lists(u16, max_size=5).map(tuple))
def test_info_request_round_trip(name: str, types: tuple[int, ...]) -> None:
    assert p.decode_info_request(p.encode_info_request(name, types)) == (name, types)


@given(names, st.lists(names, max_size=5).map(tuple))
def test_meta_context_request_round_trip(name: str, queries: tuple[str, ...]) -> None:
    data = p.encode_meta_context_request(name, queries)
    assert p.decode_meta_context_request(data) == (name, queries)


def test_meta_context_reply_round_trip() -> None:
    data = p.encode_meta_context_reply(3, "qemu:dirty-bitmap:b0")
    assert p.decode_meta_context_reply(data) == (3, "qemu:dirty-bitmap:b0")


@given(u64, u16, u32, u32, u32)
def test_infos_round_trip(size: int, flags: int, mn: int, pref: int, mx: int) -> None:
    export = p.ExportInfo(size, flags)
    assert p.decode_info(p.encode_info_export(export)) == export
    sizes = p.BlockSizeInfo(mn, pref, mx)
    assert p.decode_info(p.encode_info_block_size(sizes)) == sizes
    assert p.decode_info(b"\x00\x02hello") == p.OtherInfo(p.INFO_DESCRIPTION, b"hello")
    no_zeroes = p.encode_export_name_reply(export, no_zeroes=True)
    assert len(no_zeroes) == 10
    assert len(p.encode_export_name_reply(export, no_zeroes=False)) == 134
    assert p.decode_export_name_reply(no_zeroes) == export


def test_info_with_wrong_length() -> None:
    with pytest.raises(p.NbdProtocolError, match="NBD_INFO_EXPORT"):
        p.decode_info(b"\x00\x00" + bytes(9))
    with pytest.raises(p.NbdProtocolError, match="truncated"):
        p.decode_info(b"\x00")


@given(u16, u16, u64, u64, u32)
def test_request_round_trip(flags: int, command: int, cookie: int, offset: int, n: int) -> None:
    data = p.encode_request(flags, command, cookie, offset, n)
    assert len(data) == 28
    assert p.decode_request(data) == p.Request(flags, command, cookie, offset, n)


@given(u32, u64)
def test_simple_reply_round_trip(error: int, cookie: int) -> None:
    data = p.encode_simple_reply(error, cookie)
    assert len(data) == 16
    assert p.decode_simple_reply(data) == p.SimpleReply(error, cookie)


@given(u16, u16, u64, u32)
def test_chunk_header_round_trip(flags: int, rtype: int, cookie: int, length: int) -> None:
    data = p.encode_chunk_header(flags, rtype, cookie, length)
    assert len(data) == 20
    header = p.decode_chunk_header(data)
    assert header == p.ChunkHeader(flags, rtype, cookie, length)
    assert header.done == bool(flags & 1)


def test_bad_transmission_magics() -> None:
    with pytest.raises(p.NbdProtocolError, match="request magic"):
        p.decode_request(bytes(28))
    with pytest.raises(p.NbdProtocolError, match="simple reply magic"):
        p.decode_simple_reply(p.encode_chunk_header(0, 0, 0, 0)[:16])
    with pytest.raises(p.NbdProtocolError, match="structured reply magic"):
        p.decode_chunk_header(p.encode_simple_reply(0, 0) + bytes(4))


@given(st.integers(1, 0xFFFFFFFF), st.text(max_size=50), st.one_of(st.none(), u64))
def test_error_chunk_round_trip(error: int, message: str, offset: int | None) -> None:
    data = p.encode_error_chunk(error, message, offset)
    decoded = p.decode_error_chunk(data, with_offset=offset is not None)
    assert decoded == p.ErrorChunk(error, message.strip(), offset)


def test_error_chunk_checks() -> None:
    with pytest.raises(p.NbdProtocolError, match="error value 0"):
        p.decode_error_chunk(p.encode_error_chunk(0, "x"), with_offset=False)
    with pytest.raises(p.NbdProtocolError, match="wrong length"):
        p.decode_error_chunk(p.encode_error_chunk(5, "x") + b"!", with_offset=False)
    with pytest.raises(p.NbdProtocolError, match="truncated"):
        p.decode_error_chunk(p.encode_error_chunk(5, "x"), with_offset=True)


@given(u32, st.lists(st.tuples(u32, u32), min_size=1, max_size=50))
def test_block_status_round_trip(context_id: int, extents: list[tuple[int, int]]) -> None:
    data = p.encode_block_status(context_id, extents)
    assert len(data) == 4 + 8 * len(extents)
    assert p.decode_block_status(data) == (context_id, extents)


def test_block_status_malformed() -> None:
    with pytest.raises(p.NbdProtocolError, match="malformed"):
        p.decode_block_status(bytes(4))
    with pytest.raises(p.NbdProtocolError, match="malformed"):
        p.decode_block_status(bytes(15))


def test_offset_hole_round_trip() -> None:
    assert p.decode_offset_hole(p.encode_offset_hole(1 << 40, 4096)) == (1 << 40, 4096)
    with pytest.raises(p.NbdProtocolError):
        p.decode_offset_hole(bytes(11))


def test_every_error_value_has_a_name() -> None:
    values = [p.EPERM, p.EIO, p.ENOMEM, p.EINVAL, p.ENOSPC, p.EOVERFLOW, p.ENOTSUP, p.ESHUTDOWN]
    assert values == [1, 5, 12, 22, 28, 75, 95, 108]
    for value in values:
        assert p.error_text(value).split()[0] in {
            "EPERM",
            "EIO",
            "ENOMEM",
            "EINVAL",
            "ENOSPC",
            "EOVERFLOW",
            "ENOTSUP",
            "ESHUTDOWN",
        }
    assert p.error_text(999) == "unknown NBD error 999"
    for reply in range(p.REP_ERR_UNSUP, p.REP_ERR_EXT_HEADER_REQD + 1):
        assert not p.option_error_text(reply).startswith("error reply")
    assert p.option_error_text(p.REP_ERR_UNKNOWN) == "unknown export"


def test_long_strings_refused() -> None:
    with pytest.raises(p.NbdProtocolError, match="longer than 4096"):
        p.encode_info_request("x" * 5000)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("unix:/run/a.sock", ("unix", "/run/a.sock")),
        ("/run/a.sock", ("unix", "/run/a.sock")),
        ("relative.sock", ("unix", "relative.sock")),
        ("tcp:127.0.0.1:10809", ("inet", ("127.0.0.1", 10809))),
        ("localhost:10809", ("inet", ("localhost", 10809))),
        ("tcp:[::1]:10809", ("inet6", ("::1", 10809))),
    ],
)
def test_parse_address(address: str, expected: tuple[str, object]) -> None:
    family, target = _parse_address(address)
    assert (family.name.removeprefix("AF_").lower(), target) == expected


def test_parse_bad_address() -> None:
    with pytest.raises(NbdError, match="invalid NBD address"):
        _parse_address("tcp:host:port")


@given(st.lists(st.tuples(st.integers(-5, 70), st.integers(0, 30)), max_size=12))
def test_read_coverage_matches_a_byte_map(chunks: list[tuple[int, int]]) -> None:
    """ReadCoverage accepts a chunk exactly when it is non-empty, inside the request and
    disjoint from the accepted ones, and reports the first byte nobody set."""
    cov = p.ReadCoverage(100, 64)
    seen = [False] * 64
    for rel, length in chunks:
        ok = length > 0 and rel >= 0 and rel + length <= 64
        ok = ok and not any(seen[rel : rel + length])
        if ok:
            assert cov.add(100 + rel, length, "data") == rel
            seen[rel : rel + length] = [True] * length
        else:
            with pytest.raises(p.NbdProtocolError):
                cov.add(100 + rel, length, "data")
    assert cov.covered == sum(seen)
    assert cov.complete() == all(seen)
    if all(seen):
        assert cov.first_gap() is None
    else:
        first = seen.index(False)
        end = seen.index(True, first) if True in seen[first:] else 64
        assert cov.first_gap() == (100 + first, end - first)
