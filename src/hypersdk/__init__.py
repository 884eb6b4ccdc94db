"""HyperSDK: incremental VM disk export driven by changed block tracking.

``import hypersdk`` stays light: the SDK client (and httpx with it) loads on first use of
one of its names, so the command lines do not pay for it; nothing of the daemon
(FastAPI), vSphere (pyVmomi) or QEMU is ever loaded by it.

    from hypersdk import HyperSDK
    client = HyperSDK("http://localhost:8080")
    status = client.get_cbt_status("/Datacenter/vm/my-vm")
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from hypersdk.client import (
        AsyncHyperSDK,
        ConflictError,
        ForbiddenError,
        HyperSDK,
        HyperSDKAPIError,
        InvalidRequestError,
        JobTimeoutError,
        NetworkError,
        NotFoundError,
        ProviderError,
        ServerError,
        UnauthorizedError,
    )

__all__ = [
    "AsyncHyperSDK",
    "ConflictError",
    "ForbiddenError",
    "HyperSDK",
    "HyperSDKAPIError",
    "InvalidRequestError",
    "JobTimeoutError",
    "NetworkError",
    "NotFoundError",
    "ProviderError",
    "ServerError",
    "UnauthorizedError",
    "__version__",
]

# The SDK error names of the first release: hypersdk.client warns and maps them.
_DEPRECATED = (
    "Conflict",
    "Forbidden",
    "InvalidRequest",
    "JobTimeout",
    "NotFound",
    "ProviderFailure",
    "TransportError",
    "Unauthorized",
)


def __getattr__(name: str) -> Any:
    """Load the SDK client lazily (PEP 562)."""
    if (name in __all__ and name != "__version__") or name in _DEPRECATED:
        import hypersdk.client

        return getattr(hypersdk.client, name)
    raise AttributeError(f"module 'hypersdk' has no attribute {name!r}")
