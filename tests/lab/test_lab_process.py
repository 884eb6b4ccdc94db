"""The lab's life cycle: started in the background, found by its pid, stopped by it."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
from pathlib import Path

import httpx
import pytest

from hypersdk.cli.hyperctl import main as hyperctl
from hypersdk.errors import ConflictError, ConnectionFailed
from hypersdk.lab import VcsimLab, VmSpec


def test_start_status_stop_by_pid(lab_binary: Path, tmp_path: Path) -> None:
    lab = VcsimLab(tmp_path / "state")
    assert not lab.status().running
    with pytest.raises(ConnectionFailed):
        lab.settings()
    settings = lab.start(vms=[VmSpec("one", (1 << 20,))])
    st = lab.status()
    assert st.running and st.pid == settings.pid
    assert int(lab.pid_file.read_text()) == settings.pid
    assert json.loads(lab.settings_file.read_text())["pid"] == settings.pid
    assert settings.url == f"https://127.0.0.1:{settings.port}/sdk"
    assert Path(f"/proc/{settings.pid}/exe").resolve() == lab_binary.resolve()
    assert [vm.path for vm in lab.vms()] == ["/DC0/vm/one"]
    with pytest.raises(ConflictError):
        lab.start()

    assert lab.stop() is True
    assert not Path(f"/proc/{settings.pid}").exists()
    assert not lab.status().running
    assert not lab.pid_file.exists() and not lab.settings_file.exists()
    assert lab.stop() is False


def test_stale_pid_file_is_not_running(lab_binary: Path, tmp_path: Path) -> None:
    lab = VcsimLab(tmp_path / "state")
    lab.state_dir.mkdir()
    lab.pid_file.write_text(f"{os.getpid()}\n")  # a live process, but not the lab
    st = lab.status()
    assert not st.running and "stale" in st.message
    assert lab.stop() is False
    assert Path(f"/proc/{os.getpid()}").exists()


def test_cli_start_status_write_stop(
    lab_binary: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "cli")
    assert hyperctl(["lab", "start", "--state-dir", state, "--vm", "web:1M", "--json"]) == 0
    settings = json.loads(capsys.readouterr().out)
    assert settings["username"] and settings["password"] and settings["pid"] > 0
    try:
        assert hyperctl(["lab", "status", "--state-dir", state]) == 0
        out = capsys.readouterr().out
        assert f"export GOVC_URL={settings['url']} " in out and "GOVC_INSECURE=1" in out
        args = ["lab", "write", "--state-dir", state, "--vm", "/DC0/vm/web"]
        assert hyperctl([*args, "--offset", "4K", "--length", "8K", "--seed", "3"]) == 0
        flat = tmp_path / "cli" / "datastore" / "web" / "web-flat.vmdk"
        assert flat.read_bytes()[4096 : 4096 + 8192].strip(b"\0")
        # A user mistake is one line on stderr and exit code 2.
        assert hyperctl([*args, "--offset", "1M", "--length", "1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "outside the disk" in err
    finally:
        assert hyperctl(["lab", "stop", "--state-dir", state]) == 0
    assert "stopped" in capsys.readouterr().out
    assert hyperctl(["lab", "status", "--state-dir", state]) == 3


def test_state_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HYPERSDK_LAB_DIR", str(tmp_path / "env"))
    assert VcsimLab().state_dir == tmp_path / "env"


def test_tls_certificate_is_fresh_and_verifies_as_a_ca_file(
    lab_binary: Path, tmp_path: Path
) -> None:
    certs = []
    for run in ("a", "b"):
        lab = VcsimLab(tmp_path / run)
        s = lab.start(vms=[VmSpec("one", (1 << 20,))])
        try:
            assert s.cert_file is not None
            ctx = ssl.create_default_context(cafile=str(s.cert_file))
            # OpenSSL's default security level: a weak key would fail here
            assert httpx.get(f"{s.lab_url}/config", verify=ctx).status_code == 200
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                httpx.get(f"{s.lab_url}/config", verify=ssl.create_default_context())
            pem = s.cert_file.read_text()
            der = ssl.PEM_cert_to_DER_cert(pem)
            sha1 = hashlib.sha1(der).hexdigest().upper()
            assert s.thumbprint.replace(":", "") == sha1
            certs.append(pem)
        finally:
            lab.stop()
    assert certs[0] != certs[1]  # one per start, never a shared well-known key
