"""NBD (Network Block Device) client in pure Python.

``protocol`` holds the wire format (constants, encode/decode, no sockets) so that a
server can share it; ``client`` holds the thread-safe socket client; ``pool`` spreads
reading threads over several connections when the server allows multi-conn.

    with NbdClient.connect("unix:/run/nbd.sock", meta_contexts=("base:allocation",)) as c:
        extents = c.block_status("base:allocation", 0, c.size)
        data = c.pread(0, 1 << 20)          # thread-safe, pipelined
        c.pread_into(1 << 20, buffer)       # the same without the copy into bytes

Errors are :class:`hypersdk.errors.NbdError` or one of its subclasses defined in
``protocol`` (connection, protocol, option refused, command failed).
"""

from hypersdk.nbd.client import NbdClient
from hypersdk.nbd.pool import NbdPool
from hypersdk.nbd.protocol import (
    CONTEXT_BASE_ALLOCATION,
    CONTEXT_DIRTY_BITMAP_PREFIX,
    STATE_DIRTY,
    STATE_HOLE,
    STATE_ZERO,
    BlockStatusExtent,
    NbdCommandError,
    NbdConnectionError,
    NbdOptionError,
    NbdProtocolError,
)

__all__ = [
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
