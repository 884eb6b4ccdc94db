"""Both SDKs have the same error classes, under the same names, with the same status
mapping: this reads sdk/typescript/src/errors.ts and compares it with hypersdk.client."""

from __future__ import annotations

import builtins
import re
from pathlib import Path

import httpx
import pytest

import hypersdk.client
from hypersdk.client import (
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
from hypersdk.client._calls import Call, transport_error
from hypersdk.client._errors import BY_STATUS, ERROR_CLASSES, error_for

ERRORS_TS = Path(__file__).parents[2] / "sdk" / "typescript" / "src" / "errors.ts"


def _ts() -> str:
    return ERRORS_TS.read_text()


def test_the_same_classes_in_both_sdks() -> None:
    ts = re.findall(r"^export class (\w+) extends (\w+)", _ts(), flags=re.MULTILINE)
    assert ts, f"no exported classes found in {ERRORS_TS}"
    python = [(c.__name__, c.__bases__[0].__name__) for c in ERROR_CLASSES]
    # the same names and the same tree (the base's own base is Error / Exception)
    assert [(n, "Exception" if b == "Error" else b) for n, b in ts] == python
    exported = {
        name
        for name in hypersdk.client.__all__
        if isinstance(getattr(hypersdk.client, name), type)
        and issubclass(getattr(hypersdk.client, name), HyperSDKAPIError)
    }
    assert exported == {c.__name__ for c in ERROR_CLASSES}
    # no name that shadows a Python builtin (TimeoutError, ConnectionError, ...)
    assert not [n for n, _ in ts if hasattr(builtins, n)]


def test_the_same_status_table_in_both_sdks() -> None:
    block = re.search(r"const BY_STATUS[^{]*\{(.*?)\};", _ts(), flags=re.DOTALL)
    assert block is not None
    ts = {int(s): n for s, n in re.findall(r"(\d{3}):\s*(\w+),", block.group(1))}
    assert ts == {status: cls.__name__ for status, cls in BY_STATUS.items()}
    fallback = re.search(r"status >= 500 \? (\w+) : (\w+)", _ts())
    assert fallback is not None and fallback.groups() == ("ServerError", "HyperSDKAPIError")


# The table of sdk/typescript/tests/unit.test.ts ("errors"), here for the Python SDK.
CASES = [
    (400, "bad_request", InvalidRequestError),
    (401, "unauthorized", UnauthorizedError),
    (403, "forbidden_path", ForbiddenError),
    (404, "not_found", NotFoundError),
    (409, "locked", ConflictError),
    (413, "body_too_large", InvalidRequestError),
    (415, "unsupported_media_type", InvalidRequestError),
    (421, "misdirected_request", InvalidRequestError),
    (422, "invalid_argument", InvalidRequestError),
    (429, "too_many_streams", ConflictError),
    (500, "internal_error", ServerError),
    (502, "nbd_error", ProviderError),
    (503, "unavailable", ServerError),
    (418, "teapot", HyperSDKAPIError),
]


@pytest.mark.parametrize(("status", "code", "cls"), CASES)
def test_status_to_class(status: int, code: str, cls: type[HyperSDKAPIError]) -> None:
    err = error_for(status, {"error": {"code": code, "message": f"the {code} message"}}, "")
    assert type(err) is cls
    assert (err.status, err.code, err.message) == (status, code, f"the {code} message")


def test_no_answer_and_timeouts() -> None:
    call = Call("GET", "/health")
    refused = transport_error(call, httpx.ConnectError("refused"))
    assert type(refused) is NetworkError and refused.code == "network_error"
    slow = transport_error(call, httpx.ReadTimeout("slow"))
    assert type(slow) is NetworkError and slow.code == "timeout"
    assert slow.status is None and "GET /health timed out" in slow.message
    waited = JobTimeoutError("job j-1 still running after the timeout", {"state": "running"})
    assert waited.code == "timeout" and isinstance(waited, TimeoutError)
