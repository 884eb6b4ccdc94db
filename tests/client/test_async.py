"""AsyncHyperSDK against a live hypervisord with a token and a real QEMU."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hypersdk import AsyncHyperSDK, ConflictError, NotFoundError, UnauthorizedError
from tests.client.conftest import TOKEN
from tests.daemon.live import Hypervisord
from tests.rigs.qsd import MiB, QemuStorageDaemon


def test_async_flow(hvd: Hypervisord, qsd: QemuStorageDaemon, tmp_path: Path) -> None:
    qsd.write(0, b"\xab" * MiB)

    async def scenario() -> None:
        async with AsyncHyperSDK(hvd.base_url, token=TOKEN) as client:
            assert (await client.health())["status"] == "ok"
            assert (await client.enable_cbt(qsd.locator))["success"] is True
            status = await client.get_cbt_status(qsd.locator)
            assert status["cbt_enabled"] is True

            seen: list[dict[str, Any]] = []

            async def progress(job: dict[str, Any]) -> None:
                seen.append(job)

            job = await client.export_vm(qsd.locator, output=str(tmp_path / "arepo"))
            with pytest.raises(ConflictError):
                await client.export_vm(qsd.locator, output=str(tmp_path / "arepo"))
            done = await client.wait_for_export(job["id"], poll_interval=0.05, progress=progress)
            assert done["state"] == "succeeded" and seen[-1] == done
            analysis = await client.analyze_incremental_export(
                qsd.locator, output=str(tmp_path / "arepo")
            )
            assert analysis["can_incremental"] is True
            gens = await client.list_generations(output=str(tmp_path / "arepo"))
            assert len(gens) == 1 and gens[0]["type"] == "full"
            vm = gens[0]["vm"]
            target = tmp_path / "a.raw"
            r = await client.restore(vm, str(target), output=str(tmp_path / "arepo"))
            assert (await client.wait_for_export(r["id"]))["state"] == "succeeded"
            v = await client.verify(output=str(tmp_path / "arepo"))
            assert (await client.wait_for_export(v["id"]))["result"]["ok"] is True
            assert [j["kind"] for j in await client.list_exports(limit=3)] == [
                "verify", "restore", "export",
            ]  # fmt: skip
            with pytest.raises(NotFoundError):
                await client.get_export("j-missing")
            assert (await client.disable_cbt(qsd.locator))["success"] is True
        async with AsyncHyperSDK(hvd.base_url, token="") as anon:
            with pytest.raises(UnauthorizedError):
                await anon.list_exports()

    asyncio.run(scenario())
    qsd.flush()
    assert (tmp_path / "a.raw").read_bytes() == qsd.read(0, qsd.size)
