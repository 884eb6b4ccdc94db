"""The Python SDK of hypervisord: ``HyperSDK`` (blocking) and ``AsyncHyperSDK`` (asyncio),
over httpx. The contract is docs/api.md; the implementation modules are private."""

from hypersdk.client._async import AsyncHyperSDK
from hypersdk.client._errors import (
    Conflict,
    Forbidden,
    HyperSDKAPIError,
    InvalidRequest,
    JobTimeout,
    NotFound,
    ProviderFailure,
    ServerError,
    TransportError,
    Unauthorized,
)
from hypersdk.client._sync import HyperSDK

__all__ = [
    "AsyncHyperSDK",
    "Conflict",
    "Forbidden",
    "HyperSDK",
    "HyperSDKAPIError",
    "InvalidRequest",
    "JobTimeout",
    "NotFound",
    "ProviderFailure",
    "ServerError",
    "TransportError",
    "Unauthorized",
]
