"""Serve sessions through a live hypervisord and both Python SDK clients."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypersdk import AsyncHyperSDK, ForbiddenError, HyperSDK, NotFoundError
from tests.access.conftest import SIZE, Served, make_repo
from tests.daemon.live import Hypervisord

TOKEN = "serve-test-token-0123456789"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Hypervisord, Served]]:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    served = make_repo(allowed)
    with Hypervisord(
        tmp_path / "hvd", output=served.repo.root, allow=(allowed,), token=TOKEN
    ) as daemon:
        yield daemon, served


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.endswith(".lock"):
            h.update(str(p).encode() + p.read_bytes())
    return h.hexdigest()


def test_start_list_read_and_stop_a_session(setup: tuple[Hypervisord, Served]) -> None:
    hvd, s = setup
    with HyperSDK(hvd.base_url, token=TOKEN) as client:
        session = client.start_serve_session("vm1", generation=s.first.id)
        assert session["vm"] == "vm1" and session["generation"] == s.first.id
        assert session["disk"] == "disk-0" and session["size"] == SIZE
        assert not session["writable"]
        sock = Path(session["socket"])
        assert sock.parent == hvd.state_dir / "serve"
        assert (sock.parent.stat().st_mode & 0o777) == 0o700
        assert session["uri"] == f"nbd+unix:///?socket={sock}"
        out = s.tmp / "copy.raw"
        subprocess.run(["nbdcopy", session["uri"], str(out)], check=True, timeout=30)
        assert out.read_bytes() == s.images[s.first.id].read_bytes()
        assert [x["id"] for x in client.list_serve_sessions()] == [session["id"]]
        assert client.get_serve_session(session["id"])["bytes_read"] > 0
        stopped = client.stop_serve_session(session["id"])
        assert stopped["id"] == session["id"]
        assert not sock.exists()
        assert client.list_serve_sessions() == []
        with pytest.raises(NotFoundError):
            client.get_serve_session(session["id"])
        with pytest.raises(NotFoundError):
            client.stop_serve_session(session["id"])


def test_sessions_are_confined_and_names_resolved(
    setup: tuple[Hypervisord, Served], tmp_path: Path
) -> None:
    hvd, _ = setup
    with HyperSDK(hvd.base_url, token=TOKEN) as client:
        with pytest.raises(ForbiddenError):
            client.start_serve_session("vm1", output=str(tmp_path / "hvd"))
        with pytest.raises(NotFoundError, match="nope"):
            client.start_serve_session("nope")
        with pytest.raises(NotFoundError):
            client.start_serve_session("vm1", generation="20990101T000000-000000")
        assert client.list_serve_sessions() == []


def test_a_writable_session_through_the_async_client(setup: tuple[Hypervisord, Served]) -> None:
    hvd, s = setup
    before = _digest(s.repo.root)

    async def flow() -> None:
        async with AsyncHyperSDK(hvd.base_url, token=TOKEN) as client:
            session = await client.start_serve_session("vm1", writable=True)
            assert session["writable"] and session["generation"] == s.second.id
            io = await asyncio.to_thread(
                subprocess.run,
                ["qemu-io", "-f", "raw", "-c", "write -P 9 0 65536", "-c", "read -P 9 0 65536",
                 session["uri"]],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert io.returncode == 0 and "verification failed" not in io.stdout, io.stdout
            assert [x["id"] for x in await client.list_serve_sessions()] == [session["id"]]
            await client.stop_serve_session(session["id"])
            assert not os.path.exists(session["socket"])

    asyncio.run(flow())
    assert _digest(s.repo.root) == before


def test_stopping_the_daemon_stops_its_sessions(setup: tuple[Hypervisord, Served]) -> None:
    hvd, _ = setup
    with HyperSDK(hvd.base_url, token=TOKEN) as client:
        session = client.start_serve_session("vm1")
    client_proc = subprocess.Popen(["nbdinfo", "--map", session["uri"]], stdout=subprocess.DEVNULL)
    assert client_proc.wait(30) == 0
    hvd.stop()
    assert not os.path.exists(session["socket"])
