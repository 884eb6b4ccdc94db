"""Exceptions of the Python SDK. Every error the daemon answers becomes one of these,
carrying the server's ``status``, ``code`` and ``message``; transport failures of httpx
are translated too (chained with ``from``), so no httpx exception reaches the caller.

    HyperSDKAPIError               any failure talking to hypervisord
    ├── InvalidRequest             400 bad_request, 422 invalid_argument
    ├── Unauthorized               401 unauthorized
    ├── Forbidden                  403 forbidden_path: a path outside the daemon's allowed folders
    ├── NotFound                   404 not_found
    ├── Conflict                   409 conflict, locked, cancelled
    ├── ProviderFailure            502 provider_error, connection_failed, nbd_error, ...
    ├── ServerError                other 5xx (internal_error, repository_error, ...)
    ├── TransportError             no answer: connection refused, timeout, broken stream
    └── JobTimeout                 wait_for_export ran out of time (also a TimeoutError)
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


class InvalidRequest(HyperSDKAPIError):
    pass


class Unauthorized(HyperSDKAPIError):
    pass


class Forbidden(HyperSDKAPIError):
    pass


class NotFound(HyperSDKAPIError):
    pass


class Conflict(HyperSDKAPIError):
    pass


class ProviderFailure(HyperSDKAPIError):
    pass


class ServerError(HyperSDKAPIError):
    pass


class TransportError(HyperSDKAPIError):
    pass


class JobTimeout(HyperSDKAPIError, TimeoutError):
    def __init__(self, message: str, job: dict[str, Any]) -> None:
        super().__init__(message, code="timeout")
        self.job = job


_BY_STATUS: dict[int, type[HyperSDKAPIError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: InvalidRequest,
    502: ProviderFailure,
}


def error_for(status: int, body: Any, reason: str) -> HyperSDKAPIError:
    """The exception for an error response (``body``: its parsed JSON, or None)."""
    code, message = f"http_{status}", reason or f"HTTP {status}"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = str(err.get("code") or code)
        message = str(err.get("message") or message)
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else HyperSDKAPIError
    return cls(message, status=status, code=code)
