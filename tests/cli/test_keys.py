"""hyperctl init --encryption and hyperctl key add|list|remove|passwd: a round trip of
passwords, the last key refused, wrong or missing passwords one line with exit 2."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from hypersdk.cli import hyperctl
from hypersdk.repository.keys import Password
from hypersdk.repository.repository import Repository
from tests.chain import BS, export, restored_bytes


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERSDK_INSECURE_KDF", "1")  # scrypt at ~1 ms: tests only
    monkeypatch.delenv("HYPERSDK_PASSWORD", raising=False)
    monkeypatch.delenv("HYPERSDK_NEW_PASSWORD", raising=False)
    # hyperctl adds a stderr handler once per process; under capsys that stream is
    # replaced per test, so each test starts without it.
    monkeypatch.setattr(logging.getLogger("hypersdk.repository"), "handlers", [])


def ctl(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *argv: str,
    password: str | None = None,
    new: str | None = None,
) -> tuple[int, Any, str]:
    """Run hyperctl with --json; (exit code, parsed stdout, stderr)."""
    for name, value in (("HYPERSDK_PASSWORD", password), ("HYPERSDK_NEW_PASSWORD", new)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    capsys.readouterr()
    code = hyperctl.main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, json.loads(out) if out.strip() else None, err


def test_keys_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = str(tmp_path / "repo")
    run = lambda *a, **k: ctl(capsys, monkeypatch, *a, **k)  # noqa: E731

    code, doc, _ = run("init", "--output", repo, "--encryption", password="one")
    assert code == 0 and doc["encryption"] == "aes-256-gcm"
    first = doc["key"]
    assert os.listdir(Path(repo) / "keys") == [first]
    assert oct((Path(repo) / "keys" / first).stat().st_mode & 0o777) == "0o600"
    data = os.urandom(3 * BS)
    (tmp_path / "d.raw").write_bytes(data)
    r = Repository.open(repo, password=Password(value="one"))
    export(r, {"d": tmp_path / "d.raw"})

    code, doc, _ = run("key", "add", "--output", repo, password="one", new="two")
    assert code == 0
    second = doc["added"]
    code, keys, _ = run("key", "list", "--output", repo, password="two")
    assert code == 0
    assert [(k["id"], k["in_use"]) for k in keys] == [(first, False), (second, True)]
    assert {"id", "created", "host", "user", "kdf", "in_use"} <= set(keys[0])

    # passwd replaces the key file that "two" opens: "two" stops working, "one" does not
    code, doc, _ = run("key", "passwd", "--output", repo, password="two", new="three")
    assert code == 0 and doc == {"changed": second}
    assert run("key", "list", "--output", repo, password="two")[0] == 2
    code, keys, _ = run("key", "list", "--output", repo, password="three")
    assert [k["id"] for k in keys] == [first, second]

    # the key in use is refused; with another password it goes
    code, doc, _ = run("key", "remove", "--output", repo, first, password="one")
    assert code == 2 and doc["code"] == "invalid_argument" and "this password" in doc["error"]
    assert run("key", "remove", "--output", repo, first, password="three")[0] == 0
    assert run("generations", "--output", repo, password="one")[0] == 2
    # the last key is never removed
    code, doc, _ = run("key", "remove", "--output", repo, second, password="three")
    assert code == 2 and "last key" in doc["error"]
    assert os.listdir(Path(repo) / "keys") == [second]
    code, doc, _ = run("key", "remove", "--output", repo, "abcdef", password="three")
    assert code == 2 and doc["code"] == "not_found"

    r = Repository.open(repo, password=Password(value="three"))
    assert restored_bytes(r, r.generations("vm1")[-1], "d", tmp_path) == data


def test_wrong_or_missing_password_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = str(tmp_path / "repo")
    assert ctl(capsys, monkeypatch, "init", "--output", repo, "--encryption", password="p")[0] == 0
    out = str(tmp_path / "o.raw")
    for argv in (
        ["generations", "--output", repo], ["verify", "--output", repo],
        ["gc", "--output", repo], ["key", "list", "--output", repo],
        ["delete", "--output", repo, "--vm", "x", "--generation", "latest"],
        ["restore", "--output", repo, "--vm", "x", "--to", out],
    ):  # fmt: skip
        for password in ("wrong", None):
            code, doc, _ = ctl(capsys, monkeypatch, *argv, password=password)
            assert code == 2, (argv, doc)
            assert doc["code"] == "password_error"
            assert "\n" not in doc["error"]
    # without --json: exactly one line on stderr
    monkeypatch.setenv("HYPERSDK_PASSWORD", "wrong")
    capsys.readouterr()
    assert hyperctl.main(["generations", "--output", repo]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("hyperctl: error: wrong password")


def test_init_needs_a_password_and_a_new_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    code, doc, _ = ctl(capsys, monkeypatch, "init", "--output", str(repo), "--encryption")
    assert code == 2 and doc["code"] == "password_error"  # no terminal here to ask on
    assert not (repo / "config").exists()
    pw = tmp_path / "pw"
    pw.write_text("from a file\n")
    code, doc, _ = ctl(
        capsys, monkeypatch, "init", "--output", str(repo), "--encryption",
        "--password-file", str(pw),
    )  # fmt: skip
    assert code == 0
    Repository.open(repo, password=Password(value="from a file"))  # the newline is not part
    code, doc, _ = ctl(capsys, monkeypatch, "init", "--output", str(repo), password="x")
    assert code == 2 and "already" in doc["error"]
    code, doc, _ = ctl(capsys, monkeypatch, "key", "add", "--output", str(repo), password="x")
    assert code == 2 and doc["code"] == "password_error"
    # key add without a new password and no terminal: refused, nothing added
    code, doc, _ = ctl(
        capsys, monkeypatch, "key", "add", "--output", str(repo), password="from a file"
    )
    assert code == 2 and "new password" in doc["error"]
    assert len(os.listdir(repo / "keys")) == 1
    # a plain repository has no keys
    plain = tmp_path / "plain"
    assert ctl(capsys, monkeypatch, "init", "--output", str(plain))[0] == 0
    config = json.loads((plain / "config").read_text())
    assert "encryption" not in config and config["version"] == 2
    code, doc, _ = ctl(capsys, monkeypatch, "key", "list", "--output", str(plain))
    assert code == 2 and "not encrypted" in doc["error"]
