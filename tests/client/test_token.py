"""The SDKs find the daemon's token by themselves on its host: argument, then
HYPERSDK_API_TOKEN, then the daemon's token file (loopback URLs only)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hypersdk import AsyncHyperSDK, HyperSDK, UnauthorizedError
from hypersdk.client._token import find_token
from tests.daemon.live import Hypervisord


def test_sdks_read_the_token_file_the_daemon_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Hypervisord(tmp_path / "hvd") as hvd:  # no token configured: it makes one
        monkeypatch.delenv("HYPERSDK_API_TOKEN", raising=False)
        monkeypatch.setenv("HYPERSDK_STATE_DIR", str(hvd.state_dir))
        with HyperSDK(hvd.base_url) as client:  # the spec's snippet, unchanged
            assert client.list_exports() == []
        with HyperSDK(hvd.base_url.replace("127.0.0.1", "localhost")) as client:
            assert client.list_exports() == []

        async def run() -> None:
            async with AsyncHyperSDK(hvd.base_url) as client:
                assert await client.list_exports() == []

        asyncio.run(run())
        # an explicit token and the variable come first; "" sends none
        with HyperSDK(hvd.base_url, token="") as client, pytest.raises(UnauthorizedError):
            client.list_exports()
        monkeypatch.setenv("HYPERSDK_API_TOKEN", "not-the-token-0123456789")
        with HyperSDK(hvd.base_url) as client, pytest.raises(UnauthorizedError):
            client.list_exports()
        with HyperSDK(hvd.base_url, token=hvd.token) as client:
            assert client.list_exports() == []


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".hypersdk").mkdir(parents=True)
    (home / ".hypersdk" / "api-token").write_text("home-token-0123456789\n")
    monkeypatch.setenv("HOME", str(home))
    local = "http://localhost:8080"
    assert find_token(None, local, env={}) == "home-token-0123456789"
    assert find_token(None, "http://[::1]:8080", env={}) == "home-token-0123456789"
    state = tmp_path / "state"
    state.mkdir()
    (state / "api-token").write_text("state-token-0123456789")
    assert find_token(None, local, env={"HYPERSDK_STATE_DIR": str(state)}) == (
        "state-token-0123456789"
    )
    env = {"HYPERSDK_STATE_DIR": str(state), "HYPERSDK_API_TOKEN": "env-token-0123456789"}
    assert find_token(None, local, env=env) == "env-token-0123456789"
    assert find_token("arg-token", local, env=env) == "arg-token"
    assert find_token("", local, env=env) is None
    # the local daemon's file is never sent to another host
    assert find_token(None, "https://backup.example:8443", env={}) is None
    assert find_token(None, "http://10.1.2.3:8080", env={}) is None
    assert find_token(None, local, env={"HYPERSDK_STATE_DIR": str(tmp_path / "none")}) is None
