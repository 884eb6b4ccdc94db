"""The Python SDK of hypervisord: ``HyperSDK`` (blocking) and ``AsyncHyperSDK`` (asyncio),
over httpx. The contract is docs/api.md; the implementation modules are private."""

import warnings
from typing import Any

from hypersdk.client._async import AsyncHyperSDK
from hypersdk.client._errors import (
    DEPRECATED_NAMES,
    ConflictError,
    ForbiddenError,
    HyperSDKAPIError,
    InvalidRequestError,
    JobTimeoutError,
    NetworkError,
    NotFoundError,
    ProviderError,
    ServerError,
    UnauthorizedError,
)
from hypersdk.client._sync import HyperSDK

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
]


def __getattr__(name: str) -> Any:
    """The error names of the first release still import, with a warning (PEP 562)."""
    cls = DEPRECATED_NAMES.get(name)
    if cls is None:
        raise AttributeError(f"module 'hypersdk.client' has no attribute {name!r}")
    warnings.warn(
        f"hypersdk.client.{name} is deprecated: use {cls.__name__} (the name both SDKs share)",
        DeprecationWarning,
        stacklevel=2,
    )
    return cls
