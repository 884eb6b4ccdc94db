"""Turn pyVmomi faults and socket errors into ``hypersdk.errors`` at the boundary.

Every call into pyVmomi runs inside ``translate(what, host)``: a ``vmodl.MethodFault``
becomes a ``ProviderError`` (``NotAuthenticated``/``InvalidLogin``: ``ConnectionFailed``),
a socket or HTTP error a ``ConnectionFailed`` naming the host, each chained with ``from``.
Messages are one line and never carry credentials.
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
from collections.abc import Iterator

from pyVmomi import vim, vmodl

from hypersdk.errors import ConnectionFailed, HyperSDKError, ProviderError


def fault_message(err: BaseException) -> str:
    """One line for a vSphere fault: its ``msg`` (or localized message), else its type."""
    msg = getattr(err, "msg", None) or ""
    if not msg:
        for lm in getattr(err, "faultMessage", None) or []:
            msg = getattr(lm, "message", "") or ""
            if msg:
                break
    if not msg and not isinstance(err, vmodl.MethodFault):
        msg = str(err)
    name = type(err).__name__
    text = f"{name}: {msg}" if msg else name
    return " ".join(text.split())


@contextlib.contextmanager
def translate(what: str, host: str) -> Iterator[None]:
    """Run pyVmomi calls; re-raise their errors as HyperSDK errors about ``what``."""
    try:
        yield
    except HyperSDKError:
        raise
    except (vim.fault.NotAuthenticated, vim.fault.InvalidLogin) as err:
        raise ConnectionFailed(
            f"{what}: the vSphere session on {host} is not logged in ({fault_message(err)})"
        ) from err
    except vmodl.MethodFault as err:
        raise ProviderError(f"{what}: {fault_message(err)}") from err
    except ssl.SSLError as err:
        raise ConnectionFailed(f"{what}: TLS error talking to {host}: {err.reason}") from err
    except (OSError, http.client.HTTPException) as err:
        raise ConnectionFailed(f"{what}: lost the connection to {host}: {err}") from err
