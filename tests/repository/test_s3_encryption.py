"""An encrypted repository on S3: exports, restores, the wrong password, key files as
objects, and a known block that appears in no object's bytes or name."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import boto3

from tests.rigs.qsd import MiB, create_qcow2
from tests.rigs.s3 import S3Server, s3_env, s3_server, s3_url

__all__ = ["s3_env", "s3_server", "s3_url"]  # fixtures

PASSWORD = "correct horse battery staple"


def run(tmp: Path, *args: str, password: str | None = PASSWORD) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HYPERSDK_STATE_DIR": str(tmp / "state"), "HYPERSDK_INSECURE_KDF": "1"}
    env.pop("HYPERSDK_PASSWORD", None)
    if password is not None:
        env["HYPERSDK_PASSWORD"] = password
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=env, check=False,
        timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def qemu_io(image: Path, command: str) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(image)], check=True, capture_output=True
    )


def objects(server: S3Server, url: str) -> dict[str, bytes]:
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    s3 = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            out[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return out


def test_encrypted_repository_on_s3(s3_env: S3Server, s3_url: str, tmp_path: Path) -> None:
    block = random.Random(4).randbytes(MiB)
    (tmp_path / "block").write_bytes(block)
    image = tmp_path / "web1.qcow2"
    create_qcow2(image, 4 * MiB)
    qemu_io(image, f"write -s {tmp_path / 'block'} 1M 1M")
    vm = f"qcow2:{image}"
    hx = ("hypersdk.cli.hyperexport", "--vm", vm)
    assert run(tmp_path, *hx, "--enable-cbt").returncode == 0
    full = run(tmp_path, *hx, "--output", s3_url, "--json")
    assert full.returncode == 0, full.stderr
    qemu_io(image, "write -P 0x6b 3M 64k")
    inc = run(tmp_path, *hx, "--output", s3_url, "--json", "--incremental")
    assert inc.returncode == 0, inc.stderr

    ref = tmp_path / "ref.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(image), str(ref)], check=True)
    out = tmp_path / "out.raw"
    restore = ("hypersdk.cli.hyperctl", "restore", "--output", s3_url, "--vm", "web1")
    done = run(tmp_path, *restore, "--to", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == ref.read_bytes()

    wrong = run(tmp_path, *restore, "--to", str(tmp_path / "x.raw"), password="wrong")
    assert wrong.returncode == 2 and "wrong password" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.raw").exists()
    missing = run(
        tmp_path, "hypersdk.cli.hyperctl", "generations", "--output", s3_url, password=None
    )
    assert missing.returncode == 2 and "encrypted" in missing.stderr

    keys = run(tmp_path, "hypersdk.cli.hyperctl", "key", "list", "--output", s3_url)
    assert keys.returncode == 0 and "*" in keys.stdout, keys.stderr

    stored = objects(s3_env, s3_url)
    assert any("/keys/" in k for k in stored) and any("/data/" in k for k in stored)
    secrets = [block[1000:1032], hashlib.sha256(block).digest()]
    names = [hashlib.sha256(block).hexdigest(), PASSWORD]
    for key, data in stored.items():
        assert not any(s in data for s in secrets), key
        assert not any(n in key or n.encode() in data for n in names), key
