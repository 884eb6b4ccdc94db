"""gc as a daemon job: POST /gc through the Python SDK; its result is hyperctl gc
--json's object, and /repository shows it as the last gc."""

from __future__ import annotations

from pathlib import Path

from hypersdk import HyperSDK, InvalidRequestError
from hypersdk.repository.repository import Repository
from tests.chain import BS, export
from tests.daemon.live import Hypervisord


def test_gc_job_removes_garbage_and_is_shown(hvd: Hypervisord, repo: Path, tmp_path: Path) -> None:
    r = Repository.open_or_init(repo, block_size=BS)
    image = tmp_path / "d.raw"
    image.write_bytes(b"\x11" * BS + b"\x22" * BS)
    first = export(r, {"d": image}).manifest
    image.write_bytes(b"\x33" * 2 * BS)
    export(r, {"d": image}, parent=first)
    r.delete_generation("vm1", first.id)  # two chunks now unreferenced
    with HyperSDK(hvd.base_url, token=hvd.token) as client:
        assert client.repository_stats()["last_gc"] is None
        dry = client.wait_for_export(client.gc(dry_run=True)["id"], timeout=30)
        assert dry["kind"] == "gc" and dry["result"]["chunks_removed"] == 2
        assert sum(1 for _ in r.chunks.ids()) == 3  # a dry run removes nothing
        done = client.wait_for_export(client.gc()["id"], timeout=30)
        assert done["state"] == "succeeded" and done["result"]["dry_run"] is False
        assert done["result"]["chunks_removed"] == 2 and done["result"]["bytes_removed"] > 0
        assert sum(1 for _ in r.chunks.ids()) == 1
        assert client.repository_stats()["last_gc"]["id"] == done["id"]
        try:
            client.gc(output="/etc")
        except Exception as err:  # outside the allowed folders
            assert getattr(err, "status", None) == 403
        else:
            raise AssertionError("gc outside the allowed folders was accepted")
        try:
            client.gc(output="relative/path")
        except InvalidRequestError:
            pass
        else:
            raise AssertionError("a relative output was accepted")
