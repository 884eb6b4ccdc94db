"""hyperctl copy between a local folder and S3, plain and encrypted: byte-identical
restores from the target, only missing chunks sent, resumable after SIGKILL, and the
VM's chain of incrementals goes on in its primary repository."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3

from hypersdk.repository.repository import Repository
from tests.rigs.qsd import MiB, create_qcow2
from tests.rigs.s3 import S3Server, s3_env, s3_server, s3_url

__all__ = ["s3_env", "s3_server", "s3_url"]  # fixtures


def env(tmp: Path, **extra: str) -> dict[str, str]:
    out = {**os.environ, "HYPERSDK_STATE_DIR": str(tmp / "state"), "HYPERSDK_INSECURE_KDF": "1"}
    for var in ("HYPERSDK_PASSWORD", "HYPERSDK_FROM_PASSWORD"):
        out.pop(var, None)
    return {**out, **extra}


def run(tmp: Path, *args: str, **extra: str) -> Any:
    proc = subprocess.run(
        [sys.executable, "-m", *args, "--json"], capture_output=True, text=True,
        env=env(tmp, **extra), check=False, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def qemu_io(image: Path, command: str) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(image)], check=True, capture_output=True
    )


def raw(image: Path, tmp: Path) -> bytes:
    out = tmp / "ref.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(image), str(out)], check=True)
    return out.read_bytes()


def restored(tmp: Path, repo: str, generation: str, **extra: str) -> bytes:
    out = tmp / f"r-{generation}.raw"
    run(tmp, "hypersdk.cli.hyperctl", "restore", "--output", repo, "--vm", "web1",
        "--generation", generation, "--to", str(out), "--force", **extra)  # fmt: skip
    data = out.read_bytes()
    out.unlink()
    return data


def test_local_to_encrypted_s3_and_back(s3_url: str, tmp_path: Path) -> None:
    image = tmp_path / "web1.qcow2"
    create_qcow2(image, 4 * MiB)
    qemu_io(image, "write -P 0x5a 0 2M")
    vm = f"qcow2:{image}"
    r1, r3 = str(tmp_path / "r1"), str(tmp_path / "r3")
    hx = ("hypersdk.cli.hyperexport", "--vm", vm, "--output", r1, "--block-size", "64K")
    subprocess.run([sys.executable, "-m", hx[0], "--vm", vm, "--enable-cbt"], check=True,
                   env=env(tmp_path), capture_output=True)  # fmt: skip
    full = run(tmp_path, *hx)
    want = {full["generation"]: raw(image, tmp_path)}
    qemu_io(image, "write -P 0x6b 3M 64k")
    inc = run(tmp_path, *hx, "--incremental")
    want[inc["generation"]] = raw(image, tmp_path)

    # plain local -> encrypted S3 (created by the copy, with its password)
    first = run(tmp_path, "hypersdk.cli.hyperctl", "copy", "--from", r1, "--to", s3_url,
                HYPERSDK_PASSWORD="target-pw")  # fmt: skip
    assert first["copied"] == 2 and first["present"] == 0 and first["chunks_sent"] > 0
    again = run(tmp_path, "hypersdk.cli.hyperctl", "copy", "--from", r1, "--to", s3_url,
                HYPERSDK_PASSWORD="target-pw")  # fmt: skip
    assert again["copied"] == 0 and again["present"] == 2 and again["chunks_sent"] == 0
    for gen, data in want.items():
        assert restored(tmp_path, s3_url, gen, HYPERSDK_PASSWORD="target-pw") == data
    gens = run(tmp_path, "hypersdk.cli.hyperctl", "generations", "--output", s3_url,
               HYPERSDK_PASSWORD="target-pw")  # fmt: skip
    assert [g["id"] for g in gens] == list(want)  # the same points in time

    # encrypted S3 -> a new plain local repository, one generation only
    back = run(tmp_path, "hypersdk.cli.hyperctl", "copy", "--from", s3_url, "--to", r3,
               "--vm", "web1", "--generation", inc["generation"],
               HYPERSDK_FROM_PASSWORD="target-pw")  # fmt: skip
    assert back["copied"] == 1
    assert restored(tmp_path, r3, inc["generation"]) == want[inc["generation"]]
    assert Repository.open(r3).config.encryption is None
    check = run(tmp_path, "hypersdk.cli.hyperctl", "verify", "--output", r3)
    assert check["ok"]

    # The chain goes on in the primary repository.
    qemu_io(image, "write -P 0x7c 1M 64k")
    nxt = run(tmp_path, *hx, "--incremental")
    assert nxt["mode"] == "incremental", nxt["reason"]


def data_objects(server: S3Server, url: str) -> int:
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")  # fmt: skip
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/data/")
    return sum(len(p.get("Contents", [])) for p in pages)


def test_a_killed_copy_resumes(s3_env: S3Server, s3_url: str, tmp_path: Path) -> None:
    image = tmp_path / "big.raw"
    image.write_bytes(os.urandom(12 * MiB))
    from tests.chain import export

    repo = Repository.open_or_init(tmp_path / "r1", block_size=64 * 1024)
    made = export(repo, {"disk-0": image}, name="web1").manifest
    argv = [sys.executable, "-m", "hypersdk.cli.hyperctl", "copy", "--from", str(repo.root),
            "--to", s3_url, "--quiet"]  # fmt: skip
    lease = {"HYPERSDK_LOCK_LEASE_S": "2"}  # a killed holder's lock expires soon
    proc = subprocess.Popen(argv, env=env(tmp_path, **lease), stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while data_objects(s3_env, s3_url) < 30:
        assert proc.poll() is None, "the copy ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = time.monotonic()
    assert Repository.open(s3_url).vm_ids() == []  # nothing committed: the manifest comes last
    sent_before = data_objects(s3_env, s3_url)
    assert 30 <= sent_before < 192
    time.sleep(max(0.0, killed + 2.5 - time.monotonic()))  # the dead copy's lease expires

    resumed = run(tmp_path, "hypersdk.cli.hyperctl", "copy", "--from", str(repo.root),
                  "--to", s3_url, **lease)  # fmt: skip
    assert resumed["copied"] == 1 and resumed["chunks_present"] >= 30
    assert resumed["chunks_sent"] + resumed["chunks_present"] == 192
    out = tmp_path / "out.raw"
    run(tmp_path, "hypersdk.cli.hyperctl", "restore", "--output", s3_url, "--vm", "web1",
        "--generation", made.id, "--to", str(out))  # fmt: skip
    assert out.read_bytes() == image.read_bytes()
    assert run(tmp_path, "hypersdk.cli.hyperctl", "verify", "--output", s3_url)["ok"]
