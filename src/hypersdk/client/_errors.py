"""Exceptions of the Python SDK. Every error the daemon answers becomes one of these,
carrying the server's ``status``, ``code`` and ``message``; transport failures of httpx
are translated too (chained with ``from``), so no httpx exception reaches the caller.

The TypeScript SDK (sdk/typescript/src/errors.ts) has the same classes with the same
names and the same status mapping; tests/client/test_error_parity.py holds them equal.

    HyperSDKAPIError           any failure talking to hypervisord; other 4xx statuses
    ├── InvalidRequestError    400 bad_request, 413 body_too_large, 415 unsupported_media_type,
    │                          421 misdirected_request, 422 invalid_argument: fix the request
    ├── UnauthorizedError      401 unauthorized: missing or wrong token
    ├── ForbiddenError         403 forbidden_path: a path outside the daemon's allowed folders
    ├── NotFoundError          404 not_found: unknown VM, job or generation
    ├── ConflictError          409 conflict, locked, cancelled; 429 too_many_streams: busy,
    │                          may work later
    ├── ProviderError          502 provider_error, connection_failed, nbd_error, ...
    ├── ServerError            other 5xx (internal_error, repository_error, ...)
    ├── NetworkError           no answer: refused, reset, broken stream (network_error), or
    │                          none within the request timeout (timeout)
    └── JobTimeoutError        wait_for_export ran out of time (code timeout, ``job``: the
                               job as last seen); also a builtin TimeoutError

Names end in ``Error`` and shadow no builtin: ``NetworkError``, not ``ConnectionError``;
``JobTimeoutError``, not ``TimeoutError``. The names before they were shared with the
TypeScript SDK (``InvalidRequest``, ``NotFound``, ``TransportError``, ...) still import,
with a DeprecationWarning (see ``hypersdk.client.__getattr__``).
"""

from __future__ import annotations

from typing import Any


class HyperSDKAPIError(Exception):
    """Base of every SDK error."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def __str__(self) -> str:
        where = f"HTTP {self.status} " if self.status is not None else ""
        return f"{where}{self.code}: {self.message}"


class InvalidRequestError(HyperSDKAPIError):
    pass


class UnauthorizedError(HyperSDKAPIError):
    pass


class ForbiddenError(HyperSDKAPIError):
    pass


class NotFoundError(HyperSDKAPIError):
    pass


class ConflictError(HyperSDKAPIError):
    pass


class ProviderError(HyperSDKAPIError):
    pass


class ServerError(HyperSDKAPIError):
    pass


class NetworkError(HyperSDKAPIError):
    pass


class JobTimeoutError(HyperSDKAPIError, TimeoutError):
    def __init__(self, message: str, job: dict[str, Any]) -> None:
        super().__init__(message, code="timeout")
        self.job = job


# Every error class, base first: the list the TypeScript SDK must match.
ERROR_CLASSES: tuple[type[HyperSDKAPIError], ...] = (
    HyperSDKAPIError,
    InvalidRequestError,
    UnauthorizedError,
    ForbiddenError,
    NotFoundError,
    ConflictError,
    ProviderError,
    ServerError,
    NetworkError,
    JobTimeoutError,
)

BY_STATUS: dict[int, type[HyperSDKAPIError]] = {
    400: InvalidRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: InvalidRequestError,
    415: InvalidRequestError,
    421: InvalidRequestError,
    422: InvalidRequestError,
    429: ConflictError,
    502: ProviderError,
}

# The names of the first SDK release, kept importable (with a warning) from hypersdk.client.
DEPRECATED_NAMES: dict[str, type[HyperSDKAPIError]] = {
    "InvalidRequest": InvalidRequestError,
    "Unauthorized": UnauthorizedError,
    "Forbidden": ForbiddenError,
    "NotFound": NotFoundError,
    "Conflict": ConflictError,
    "ProviderFailure": ProviderError,
    "TransportError": NetworkError,
    "JobTimeout": JobTimeoutError,
}


def error_class(status: int) -> type[HyperSDKAPIError]:
    """The class for an HTTP error status (one table, the same in the TypeScript SDK)."""
    cls = BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else HyperSDKAPIError
    return cls


def error_for(status: int, body: Any, reason: str) -> HyperSDKAPIError:
    """The exception for an error response (``body``: its parsed JSON, or None)."""
    code, message = f"http_{status}", reason or f"HTTP {status}"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = str(err.get("code") or code)
        message = str(err.get("message") or message)
    return error_class(status)(message, status=status, code=code)
