"""The error table of docs/errors.md is what the code does: each row matches its class,
and each kind, made to happen through hyperexport or hyperctl, gives its exit code."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import pytest

import hypersdk.errors as errors
from hypersdk.cli import hyperctl, hyperexport
from hypersdk.repository.repository import Repository
from tests.cli.named_repo import named_repo

DOC = Path(__file__).parents[2] / "docs" / "errors.md"
ROW = re.compile(r"^\| `(\w+)` \| (\d+) \| (\d+) \| `(\w+)` \|")


def table() -> dict[str, tuple[int, int, str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            rows[m[1]] = (int(m[2]), int(m[3]), m[4])
    return rows


def test_the_table_is_the_exception_tree() -> None:
    classes = {
        name: cls
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, errors.HyperSDKError)
    }
    rows = table()
    assert set(rows) == set(classes), "docs/errors.md and hypersdk.errors differ"
    for name, (exit_code, status, code) in rows.items():
        cls = classes[name]
        assert (cls.exit_code, cls.http_status, cls.code) == (exit_code, status, code), name


# (what, command, expected exit, expected code); {repo} {tmp} are filled in, and the
# command runs in this process (the entry points' own main).
CASES = [
    ("VM not held", ["hyperctl", "generations", "--output", "{repo}", "--vm", "nope"],
     2, "not_found"),
    ("VM not held", ["hyperctl", "restore", "--output", "{repo}", "--vm", "qcow2:/x.qcow2",
                     "--to", "{tmp}/out.raw"], 2, "not_found"),
    ("image missing", ["hyperexport", "--vm", "qcow2:{tmp}/none.qcow2", "--output", "{repo}"],
     2, "not_found"),
    ("socket missing", ["hyperexport", "--vm", "qemu:{tmp}/none.sock", "--output", "{repo}"],
     2, "not_found"),
    ("repository missing", ["hyperctl", "verify", "--output", "{tmp}/none"], 2, "not_found"),
    ("ambiguous name", ["hyperctl", "verify", "--output", "{repo}", "--vm", "twin"],
     2, "invalid_argument"),
    ("bad input", ["hyperctl", "restore", "--output", "{repo}", "--vm", "web",
                   "--to", "{tmp}/a.raw"], 2, "invalid_argument"),  # exists, no --force
    ("bad input", ["hyperexport", "--vm", "qcow2:{tmp}", "--output", "{repo}"],
     2, "invalid_argument"),  # a folder, not an image
    ("conflict", ["hyperctl", "delete", "--output", "{repo}", "--vm", "vm-a",
                  "--generation", "latest"], 1, "locked"),
    ("damaged", ["hyperctl", "restore", "--output", "{repo}", "--vm", "vm-b",
                 "--to", "{tmp}/out.raw"], 1, "integrity_error"),
    ("hypervisor unreachable", ["hyperexport", "--vm", "qemu:{tmp}/dead.sock",
                                "--output", "{repo}"], 1, "connection_failed"),
    ("repository unusable", ["hyperctl", "generations", "--output", "{tmp}/broken"],
     1, "repository_error"),
]  # fmt: skip


def _locked(repo: Repository) -> AbstractContextManager[object]:
    return repo.writer("vm-a")


def _damaged(repo: Repository) -> AbstractContextManager[object]:
    (manifest,) = (repo.root / "vms" / "vm-b" / "generations").glob("*.json")
    manifest.write_text("{")  # vm-b's only manifest
    return nullcontext()


SETUP: dict[str, Callable[[Repository], AbstractContextManager[object]]] = {
    "conflict": _locked,
    "damaged": _damaged,
}


@pytest.mark.parametrize("what, argv, exit_code, code", CASES, ids=[c[0] for c in CASES])
def test_each_kind_exits_with_its_code(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    what: str,
    argv: list[str],
    exit_code: int,
    code: str,
) -> None:
    monkeypatch.setenv("HYPERSDK_STATE_DIR", str(tmp_path / "state"))
    repo = named_repo(tmp_path)
    # a repository whose config cannot be read
    (tmp_path / "broken" / "config").mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "dead.sock"))  # the file stays, nobody listens
    prog, *args = [a.format(repo=repo.root, tmp=tmp_path) for a in argv]
    main = hyperctl.main if prog == "hyperctl" else hyperexport.main
    capsys.readouterr()
    with SETUP.get(what, lambda _: nullcontext())(repo):
        got = main([*args, "--json"])
    out, err = capsys.readouterr()
    assert got == exit_code, (out, err)
    doc = json.loads(out)
    assert doc["code"] == code, doc
    assert "Traceback" not in err
