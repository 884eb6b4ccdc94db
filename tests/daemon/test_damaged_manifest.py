"""One damaged manifest through the daemon: the other generations are still listed and
restore, the damaged one is a 409 naming it (never a 500), and a verify job reports it."""

from __future__ import annotations

import os
from pathlib import Path

from hypersdk.repository.repository import Repository
from tests.chain import BS, export
from tests.daemon.live import Hypervisord, wait_job


def test_one_bad_manifest_is_isolated(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    repo = Repository.open_or_init(root, block_size=BS)
    image = tmp_path / "a.raw"
    image.write_bytes(os.urandom(4 * BS))
    first = export(repo, {"disk-0": image}).manifest
    with open(image, "r+b") as f:
        f.write(os.urandom(BS))
    second = export(repo, {"disk-0": image}, parent=first).manifest
    # A flipped digit: still JSON of the right shape, but the checksum no longer holds.
    path = repo.layout.manifest("vm1", first.id)
    blob = path.read_bytes()
    at = blob.index(b'"capacity_bytes": ') + len(b'"capacity_bytes": ')
    path.write_bytes(blob[:at] + (b"9" if blob[at : at + 1] != b"9" else b"8") + blob[at + 1 :])

    restored = tmp_path / "restored"
    restored.mkdir()
    with (
        Hypervisord(tmp_path / "hvd", output=root, allow=(restored,)) as hvd,
        hvd.client() as http,
    ):
        r = http.get("/generations", params={"output": str(root), "vm": "vm1"})
        assert r.status_code == 200, r.text
        assert [g["id"] for g in r.json()["generations"]] == [second.id]

        to = restored / "out.raw"
        r = http.post("/restores", json={"vm": "vm1", "generation": first.id, "to": str(to)})
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "integrity_error"
        assert first.id in r.json()["error"]["message"]
        assert not to.exists()

        r = http.post("/restores", json={"vm": "vm1", "generation": second.id, "to": str(to)})
        assert r.status_code == 202, r.text
        assert wait_job(http, r.json()["id"])["state"] == "succeeded"
        assert to.read_bytes() == image.read_bytes()

        r = http.post("/verifications", json={"vm": "vm1"})
        assert r.status_code == 202, r.text
        job = wait_job(http, r.json()["id"])
        assert job["state"] == "succeeded" and job["result"]["ok"] is False
        damage = job["result"]["damage"]
        assert [d["generation"] for d in damage] == [first.id]
        assert job["result"]["generations"] == 2  # both looked at, one found damaged
        assert job["result"]["chunks_checked"] > 0  # the readable one was checked in full
        assert "Traceback" not in (tmp_path / "hvd" / "hypervisord.log").read_text()
