"""The CLI and the daemon build the same ExportRequest: they refuse the same bad value
with the same words, each naming the field as its user knows it, and the daemon's
defaults (what the SDKs get when they leave a field out) are the request's."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hypersdk.cli.hyperexport import FLAGS
from hypersdk.daemon.jobs import JobState
from hypersdk.engine.request import ExportRequest
from tests.daemon.live import Hypervisord

POWER_OF_TWO = "must be a power of two from 64K to 16M, not 96K"


def hyperexport(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = "import sys; from hypersdk.cli.hyperexport import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=cwd, timeout=60
    )


@pytest.fixture(scope="module")
def hvd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hypervisord]:
    tmp = tmp_path_factory.mktemp("hvd")
    with Hypervisord(tmp / "hvd", output=tmp / "repo", allow=(tmp,)) as daemon:
        yield daemon


def post_export(hvd: Hypervisord, **fields: Any) -> tuple[int, str]:
    vm = f"qcow2:{hvd.state_dir.parent.parent / 'vm.qcow2'}"
    with hvd.client() as http:
        r = http.post("/exports", json={"vm_path": vm, **fields})
    message = r.json()["error"]["message"] if r.status_code >= 400 else ""
    return r.status_code, message


def test_cli_and_daemon_refuse_a_block_size_alike(hvd: Hypervisord, tmp_path: Path) -> None:
    proc = hyperexport("--vm", f"qcow2:{tmp_path / 'vm.qcow2'}", "--output", "repo",
                       "--block-size", "96K", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == f"hyperexport: error: --block-size {POWER_OF_TWO}\n"
    assert not (tmp_path / "repo").exists()

    # in range for the schema, refused by the request: the same words, by field name
    status, message = post_export(hvd, block_size=96 * 1024)
    assert (status, message) == (422, f"block_size {POWER_OF_TWO}")
    # out of the schema's range: refused before, still naming the field
    status, message = post_export(hvd, block_size=3)
    assert status == 422 and message.startswith("block_size"), message


def test_cli_and_daemon_refuse_a_level_without_zstd(hvd: Hypervisord, tmp_path: Path) -> None:
    proc = hyperexport("--vm", f"qcow2:{tmp_path / 'vm.qcow2'}", "--output", "repo",
                       "--compress", "lz4:3", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr
        == "hyperexport: error: --compress 'lz4:3': the level applies to zstd only, not to lz4\n"
    )
    status, message = post_export(hvd, compression="lz4", compression_level=3)
    assert (status, message) == (422, "compression_level applies to zstd only, not to lz4")


def test_daemon_defaults_are_the_requests(hvd: Hypervisord) -> None:
    with hvd.client() as http:
        schema = http.get("/openapi.json").json()["components"]["schemas"]
    props = schema["ExportCreate"]["properties"]
    for f in dataclasses.fields(ExportRequest):
        assert f.name in props, f.name
        if f.name != "output":  # the daemon's default repository instead
            assert props[f.name].get("default") == f.default, f.name
    # the one state vocabulary is what the API documents
    assert schema["JobState"]["enum"] == [s.value for s in JobState]
    assert schema["Job"]["properties"]["state"] == {"$ref": "#/components/schemas/JobState"}


def test_every_field_has_a_flag() -> None:
    assert set(FLAGS) == {f.name for f in dataclasses.fields(ExportRequest)}
