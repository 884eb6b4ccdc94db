"""The SDK's public surface is pinned, and ``import hypersdk`` stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import hypersdk
import hypersdk.client


def test_all_is_pinned() -> None:
    expected = [
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
    assert hypersdk.__all__ == [*expected, "__version__"]
    assert hypersdk.client.__all__ == expected
    for name in expected:
        assert getattr(hypersdk, name) is getattr(hypersdk.client, name)
    sync = {n for n in dir(hypersdk.HyperSDK) if not n.startswith("_")}
    asyn = {n for n in dir(hypersdk.AsyncHyperSDK) if not n.startswith("_")}
    assert sync - {"close"} == asyn - {"aclose"}
    assert {
        "enable_cbt", "disable_cbt", "get_cbt_status", "analyze_incremental_export",
        "export_vm", "get_export", "list_exports", "wait_for_export", "cancel_export",
        "list_generations", "restore", "verify", "health",
    } <= sync  # fmt: skip


def test_import_is_light() -> None:
    code = (
        "import sys, hypersdk; from hypersdk import HyperSDK, AsyncHyperSDK; "
        "print(' '.join(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    heavy = ("fastapi", "starlette", "uvicorn", "pydantic", "pyVmomi", "pyVim", "qemu")
    assert not [m for m in out if m.split(".")[0] in heavy]
    ours = ("hypersdk.daemon", "hypersdk.providers", "hypersdk.engine", "hypersdk.repository")
    assert not [m for m in out if m.startswith(ours)]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("InvalidRequest", "InvalidRequestError"),
        ("Unauthorized", "UnauthorizedError"),
        ("Forbidden", "ForbiddenError"),
        ("NotFound", "NotFoundError"),
        ("Conflict", "ConflictError"),
        ("ProviderFailure", "ProviderError"),
        ("TransportError", "NetworkError"),
        ("JobTimeout", "JobTimeoutError"),
    ],
)
def test_the_first_releases_error_names_still_import_with_a_warning(old: str, new: str) -> None:
    for module in (hypersdk, hypersdk.client):
        with pytest.warns(DeprecationWarning, match=f"use {new} "):
            assert getattr(module, old) is getattr(hypersdk.client, new)
    with pytest.raises(AttributeError):
        hypersdk.client.NoSuchError  # noqa: B018
