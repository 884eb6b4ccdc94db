"""Every error the API answers is ``{"error": {"code", "message"}}``; never a trace.

- HyperSDKError: its own ``http_status`` and ``code``.
- A body that is not JSON or not an object: 400 ``bad_request``.
- A field that fails validation: 422 ``invalid_argument``.
- Starlette's own errors (unknown route, wrong method): their status.
- Anything else: 500 ``internal_error`` with a generic message (logged with its trace).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hypersdk.errors import HyperSDKError

log = logging.getLogger("hypervisord")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_argument",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _where(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts)


def describe_validation(errors: Sequence[Any]) -> tuple[int, str, str]:
    """(status, code, message) for pydantic's list of errors."""
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "json_invalid":
            return 400, "bad_request", "the request body is not valid JSON"
        if loc == ("body",):
            if err.get("type") == "missing":
                return 400, "bad_request", "the request needs a JSON object body"
            return 400, "bad_request", "the request body must be a JSON object"
    first = errors[0] if errors else {}
    where = _where(first.get("loc", ()))
    msg = str(first.get("msg", "invalid value"))
    return 422, "invalid_argument", f"{where}: {msg}" if where else msg


async def _hypersdk_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HyperSDKError)
    message = str(exc).splitlines()[0] if str(exc) else exc.code
    return error_response(exc.http_status, exc.code, message)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    status, code, message = describe_validation(exc.errors())
    return error_response(status, code, message)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, detail, dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error (see the daemon log)")


def install(app: FastAPI) -> None:
    app.add_exception_handler(HyperSDKError, _hypersdk_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
