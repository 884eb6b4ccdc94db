"""The SDK's public surface is pinned, and ``import hypersdk`` stays light."""

from __future__ import annotations

import subprocess
import sys

import hypersdk
import hypersdk.client


def test_all_is_pinned() -> None:
    expected = [
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
