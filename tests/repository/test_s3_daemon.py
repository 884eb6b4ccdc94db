"""The daemon confines s3:// repositories as it confines folders: an ``--allow-path`` may
be an ``s3://bucket/prefix``, and a URL that is not at or under one is 403."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hypersdk.daemon.config import load_config
from hypersdk.daemon.paths import AllowedPaths
from hypersdk.errors import ForbiddenPath, UsageError
from tests.daemon.live import Hypervisord, wait_job
from tests.rigs.qsd import MiB, create_qcow2
from tests.rigs.s3 import S3Server, s3_env, s3_server

__all__ = ["s3_env", "s3_server"]  # fixtures


def test_url_prefixes_match_whole_segments(tmp_path: Path) -> None:
    allowed = AllowedPaths.of([str(tmp_path), "s3://bucket1/pre", "s3://bucket2"])
    assert allowed.output("s3://bucket1/pre") == "s3://bucket1/pre"
    assert allowed.output("s3://bucket1/pre/") == "s3://bucket1/pre"
    assert allowed.output("s3://bucket1/pre/vm/repo") == "s3://bucket1/pre/vm/repo"
    assert allowed.output("s3://bucket2/any/thing") == "s3://bucket2/any/thing"
    for outside in ("s3://bucket1/prefix2", "s3://bucket1/pr", "s3://bucket1", "s3://bucket3/pre"):
        with pytest.raises(ForbiddenPath, match="outside the URLs"):
            allowed.output(outside)
    for bad in ("s3://bucket1/pre/../x", "s3://bucket1/pre//x", "s3://bucket1/pre/./x"):
        with pytest.raises(UsageError):
            allowed.output(bad)
    with pytest.raises(ForbiddenPath):
        AllowedPaths.of([str(tmp_path)]).output("s3://bucket1/pre")


def test_daemon_exports_to_an_allowed_url_and_refuses_others(
    s3_env: S3Server, tmp_path: Path
) -> None:
    bucket = s3_env.bucket()
    image = tmp_path / "d.qcow2"
    create_qcow2(image, 2 * MiB)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 1M", str(image)],
        check=True,
        capture_output=True,
    )
    allowed = f"s3://{bucket}/pre"
    with Hypervisord(tmp_path / "hvd", allow=(tmp_path,), args=("--allow-path", allowed)) as hvd:
        http = hvd.client()
        vm = f"qcow2:{image}"
        assert http.post("/cbt/enable", json={"vm_path": vm}).status_code == 200
        r = http.post("/exports", json={"vm_path": vm, "output": f"{allowed}/repo"})
        assert r.status_code == 202, r.text
        job = wait_job(http, r.json()["id"])
        assert job["state"] == "succeeded", job
        gens = http.get("/generations", params={"output": f"{allowed}/repo"})
        assert gens.status_code == 200 and len(gens.json()["generations"]) == 1, gens.text
        for outside in (f"s3://{bucket}/prefix2", f"s3://{bucket}/pr", "s3://elsewhere/pre"):
            r = http.post("/exports", json={"vm_path": vm, "output": outside})
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_path", r.text
            r = http.get("/generations", params={"output": outside})
            assert r.status_code == 403, r.text
        r = http.get("/generations", params={"output": f"{allowed}/../x"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_argument", r.text


def test_allowed_urls_from_the_environment_and_the_default_output(tmp_path: Path) -> None:
    config = load_config(
        output="s3://bucket1/repo/",
        env={"HYPERSDK_ALLOW_PATHS": f"{tmp_path}:s3://bucket2/pre:{tmp_path}"},
        config_file=None,
    )
    assert config.allow_paths == (str(tmp_path), "s3://bucket2/pre", str(tmp_path))
    assert config.output == "s3://bucket1/repo"
    allowed = AllowedPaths.of([*config.allow_paths, config.output])
    assert allowed.output("s3://bucket2/pre/x") == "s3://bucket2/pre/x"
    assert allowed.output("s3://bucket1/repo") == "s3://bucket1/repo"
    with pytest.raises(ForbiddenPath):
        allowed.output("s3://bucket1/repo2")
