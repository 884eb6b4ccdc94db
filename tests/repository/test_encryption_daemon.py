"""hypervisord and an encrypted repository: the password comes from its password_file
(or HYPERSDK_PASSWORD), never from a request; without it, or with a wrong one, the answer
is a 422 password_error, and the password is in no job record or state file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hypersdk.repository.keys import Password
from hypersdk.repository.repository import Repository
from tests.chain import BS, export
from tests.daemon.live import Hypervisord, wait_job

PASSWORD = "daemon-side secret"


def test_daemon_reads_an_encrypted_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYPERSDK_INSECURE_KDF", "1")
    root = tmp_path / "repo"
    repo = Repository.open_or_init(
        root, block_size=BS, password=Password(value=PASSWORD), encrypt=True
    )
    image = tmp_path / "a.raw"
    image.write_bytes(os.urandom(5 * BS))
    gen = export(repo, {"disk-0": image}).manifest
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    restored = tmp_path / "restored"
    restored.mkdir()

    env = {"HYPERSDK_PASSWORD_FILE": str(secret)}
    with Hypervisord(tmp_path / "hvd", output=root, allow=(restored,), env=env) as hvd:
        with hvd.client() as http:
            r = http.get("/generations", params={"vm": "vm1"})
            assert r.status_code == 200, r.text
            assert [g["id"] for g in r.json()["generations"]] == [gen.id]
            to = restored / "out.raw"
            r = http.post("/restores", json={"vm": "vm1", "to": str(to)})
            assert r.status_code == 202, r.text
            job = wait_job(http, r.json()["id"])
            assert job["state"] == "succeeded", job
            assert to.read_bytes() == image.read_bytes()
            r = http.post("/verifications", json={"vm": "vm1"})
            job = wait_job(http, r.json()["id"])
            assert job["state"] == "succeeded" and job["result"]["ok"], job
            jobs = http.get("/jobs").text
            assert PASSWORD not in jobs and str(secret) not in jobs
        for path in (tmp_path / "hvd").rglob("*"):
            if path.is_file():
                assert PASSWORD.encode() not in path.read_bytes(), path

    for env in ({}, {"HYPERSDK_PASSWORD": "wrong"}):
        with (
            Hypervisord(tmp_path / f"hvd{len(env)}", output=root, env=env) as hvd,
            hvd.client() as http,
        ):
            r = http.get("/generations", params={"vm": "vm1"})
            assert r.status_code == 422, r.text
            assert r.json()["error"]["code"] == "password_error"
            assert "\n" not in r.json()["error"]["message"]

    # A password file others can read is refused at start.
    secret.chmod(0o644)
    env = {"HYPERSDK_PASSWORD_FILE": str(secret)}
    hvd = Hypervisord(tmp_path / "hvd-open", output=root, env=env)
    try:
        hvd.start()
        started = True
    except RuntimeError as exc:
        started = False
        assert "chmod 600" in str(exc)
    finally:
        hvd.stop()
    assert not started
