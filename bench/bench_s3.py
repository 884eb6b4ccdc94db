"""S3 benchmark: which client (obstore or boto3), and S3 against local, in one run.

    .venv/bin/python bench/bench_s3.py [--size-mib 128] [--chunks 256] [--parallel 4]

Starts moto's S3 server on loopback (the same server the tests use), then:

1. the client comparison that chose obstore: parallel PUTs of 512 KiB objects (8
   threads, what the export's upload pool does), parallel GETs and parallel ranged GETs,
   obstore next to boto3 against the same server, as obstore/boto3 ratios;
2. export and restore of one image through the engine into a local repository and into
   an s3:// repository, as S3/local ratios.

moto is a Python server on the same 2 cores: the absolute S3 numbers are moto's, not a
cloud's, and the ratios say how much of the work the client and the repository add.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3
import obstore
from obstore.store import S3Store
from tests.chain import export
from tests.rigs.s3 import S3Server, running_s3_server

from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import restore_disk
from imagegen import MIB, make_image, timed

OBJECT = 512 * 1024
THREADS = 8


def _parallel(fn: Callable[[int], object], n: int) -> None:
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(fn, range(n)))


def clients(server: S3Server, n: int) -> list[tuple[str, float, float]]:
    """(operation, obstore MiB/s, boto3 MiB/s)."""
    bucket = server.bucket()
    blob = os.urandom(OBJECT)
    env = server.env()
    ob = S3Store(
        bucket,
        config={
            "access_key_id": env["AWS_ACCESS_KEY_ID"],
            "secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
            "region": env["AWS_REGION"],
            "endpoint": server.endpoint,
        },
        client_options={"allow_http": True},
    )
    bo = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    )
    mib = n * OBJECT / MIB
    rows = []
    t_ob, _ = timed(_parallel, lambda i: obstore.put(ob, f"ob/{i}", blob, mode="create"), n)
    t_bo, _ = timed(
        _parallel,
        lambda i: bo.put_object(Bucket=bucket, Key=f"bo/{i}", Body=blob, IfNoneMatch="*"),
        n,
    )
    rows.append(("PUT if absent", mib / t_ob, mib / t_bo))
    t_ob, _ = timed(_parallel, lambda i: bytes(obstore.get(ob, f"ob/{i}").bytes()), n)
    t_bo, _ = timed(
        _parallel, lambda i: bo.get_object(Bucket=bucket, Key=f"bo/{i}")["Body"].read(), n
    )
    rows.append(("GET", mib / t_ob, mib / t_bo))
    half = OBJECT // 2
    t_ob, _ = timed(
        _parallel, lambda i: bytes(obstore.get_range(ob, f"ob/{i}", start=half, length=half)), n
    )
    t_bo, _ = timed(
        _parallel,
        lambda i: bo.get_object(Bucket=bucket, Key=f"bo/{i}", Range=f"bytes={half}-")[
            "Body"
        ].read(),
        n,
    )
    rows.append(("ranged GET (half)", mib / 2 / t_ob, mib / 2 / t_bo))
    return rows


def repositories(server: S3Server, work: Path, size_mib: int, parallel: int) -> list[str]:
    img = work / "disk.raw"
    make_image(img, size_mib * MIB)
    for k, v in server.env().items():
        os.environ[k] = v
    url = f"s3://{server.bucket()}/bench-{uuid.uuid4().hex[:6]}"
    out = []
    times: dict[str, tuple[float, float]] = {}
    for name, location in (("local", str(work / "repo")), ("s3", url)):
        repo = Repository.open_or_init(location)
        t_exp, result = timed(export, repo, {"disk-0": img}, parallel=parallel)
        target = work / f"restore-{name}.raw"
        t_res, _ = timed(restore_disk, repo, result.manifest, "disk-0", target, parallel=parallel)
        if target.read_bytes() != img.read_bytes():
            raise SystemExit(f"{name}: the restored image differs")
        target.unlink()
        times[name] = (t_exp, t_res)
        out.append(
            f"  {name:6} export {size_mib / t_exp:8.1f} MiB/s   "
            f"restore {size_mib / t_res:8.1f} MiB/s"
        )
    (le, lr), (se, sr) = times["local"], times["s3"]
    out.append(f"  S3/local: export {le / se:.2f}x   restore {lr / sr:.2f}x (throughput ratios)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=128)
    ap.add_argument("--chunks", type=int, default=256, help="objects per client test")
    ap.add_argument("--parallel", type=int, default=4)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hypersdk-bench-s3-"))
    try:
        with running_s3_server() as server:
            print(f"S3 clients, {args.chunks} objects of {OBJECT // 1024} KiB, {THREADS} threads:")
            for op, ob, bo in clients(server, args.chunks):
                print(f"  {op:18} obstore {ob:8.1f} MiB/s   boto3 {bo:8.1f} MiB/s   {ob / bo:.2f}x")
            print(f"Repository, a {args.size_mib} MiB image (zstd-1), export then restore:")
            for line in repositories(server, work, args.size_mib, args.parallel):
                print(line)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
