"""Backup policies through both Python SDK clients and ``hyperctl policy``: list, get,
create, run now, history; mistakes and unknown names as the typed errors (the CLI: one
line and exit 2)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from hypersdk import AsyncHyperSDK, HyperSDK, InvalidRequestError, NotFoundError
from hypersdk.cli.hyperctl import main as hyperctl
from tests.client.conftest import TOKEN
from tests.daemon.live import Hypervisord
from tests.rigs.qsd import MiB, QemuStorageDaemon

YEARLY = "0 0 1 1 *"


def wait_finished(client: HyperSDK, name: str, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        run = next(r for r in client.policy_history(name) if r["id"] == run_id)
        if run["state"] != "running":
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.05)


def test_policies_through_the_sdks_and_the_cli(
    hvd: Hypervisord,
    qsd: QemuStorageDaemon,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    qsd.write(0, b"\x5c" * MiB)
    with HyperSDK(hvd.base_url, token=TOKEN) as client:
        policy = {"vms": [qsd.locator], "schedule": YEARLY, "retention": {"keep_last": 2}}
        made = client.put_policy("sdk", policy)
        assert made["name"] == "sdk" and made["retention"]["keep_last"] == 2
        assert [p["name"] for p in client.list_policies()] == ["sdk"]
        assert client.get_policy("sdk")["next_run"].startswith(f"{time.gmtime().tm_year + 1}-01-01")
        run = client.run_policy("sdk")
        assert run["state"] in ("running", "succeeded") and run["trigger"] == "manual"
        finished = wait_finished(client, "sdk", run["id"])
        assert finished["state"] == "succeeded", finished
        job = client.get_export(finished["exports"][0]["job_id"])
        assert job["state"] == "succeeded" and job["vm_path"] == qsd.locator
        with pytest.raises(NotFoundError) as nf:
            client.policy_history("nope")
        assert nf.value.message == "no policy 'nope'"
        with pytest.raises(InvalidRequestError) as bad:
            client.put_policy("bad", {**policy, "schedule": "often"})
        assert "schedule 'often' is not a cron expression" in bad.value.message

    async def use_async() -> tuple[list[str], dict[str, Any], list[dict[str, Any]]]:
        async with AsyncHyperSDK(hvd.base_url, token=TOKEN) as client:
            names = [p["name"] for p in await client.list_policies()]
            got = await client.get_policy("sdk")
            started = await client.run_policy("sdk")
            while (await client.policy_history("sdk", limit=1))[0]["state"] == "running":
                await asyncio.sleep(0.05)
            assert (await client.policy_history("sdk", limit=1))[0]["id"] == started["id"]
            return names, got, await client.policy_history("sdk")

    names, got, history = asyncio.run(use_async())
    assert names == ["sdk"] and got["schedule"] == YEARLY
    assert [r["state"] for r in history] == ["succeeded", "succeeded"]

    monkeypatch.setenv("HYPERSDK_URL", hvd.base_url)
    monkeypatch.setenv("HYPERSDK_API_TOKEN", TOKEN)
    capsys.readouterr()
    assert hyperctl(["policy", "list", "--json"]) == 0
    assert [p["name"] for p in json.loads(capsys.readouterr().out)["policies"]] == ["sdk"]
    assert hyperctl(["policy", "run", "sdk", "--wait", "--json"]) == 0
    ran = json.loads(capsys.readouterr().out)
    assert ran["state"] == "succeeded" and ran["exports"][0]["job_id"]
    assert hyperctl(["policy", "history", "sdk", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert len(runs) == 3 and runs[0]["id"] == ran["id"]
    assert runs[0]["prune"]["removed"] == 1  # keep_last 2 of three generations
    assert hyperctl(["policy", "history", "sdk"]) == 0
    table = capsys.readouterr().out
    assert ran["id"] in table and "pruned 1" in table
    assert hyperctl(["policy", "list"]) == 0
    assert "sdk" in capsys.readouterr().out
    assert hyperctl(["policy", "run", "nope"]) == 2
    assert capsys.readouterr().err == "hyperctl: error: no policy 'nope'\n"
