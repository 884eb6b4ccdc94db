"""The error responses every route documents in /openapi.json."""

from __future__ import annotations

from typing import Any

from hypersdk.daemon.models import ErrorResponse

_E: dict[str, Any] = {"model": ErrorResponse}

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {**_E, "description": "malformed body (bad_request)"},
    401: {**_E, "description": "missing or wrong token (unauthorized)"},
    403: {**_E, "description": "a path outside the allowed folders (forbidden_path)"},
    404: {**_E, "description": "unknown VM, repository, generation or job (not_found)"},
    409: {**_E, "description": "conflict (conflict, locked, cancelled)"},
    413: {**_E, "description": "body over 64 KiB (body_too_large)"},
    415: {**_E, "description": "body not sent as application/json (unsupported_media_type)"},
    421: {**_E, "description": "Host not a loopback name (misdirected_request)"},
    422: {**_E, "description": "invalid field (invalid_argument)"},
    500: {**_E, "description": "the repository cannot be used, or an internal error"},
    502: {**_E, "description": "the hypervisor failed (provider_error, connection_failed, ...)"},
}
