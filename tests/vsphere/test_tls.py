"""One TLS context for the vSphere login and the datastore reads: the system store plus
an optional CA file (issue 8, item 5). The lab serves a fresh certificate per start and
writes it to ``vcsim-cert.pem``: that is the CA file here."""

from __future__ import annotations

import json
import ssl
from dataclasses import replace
from pathlib import Path

import pytest

from hypersdk.errors import ConnectionFailed, UsageError
from hypersdk.lab import VcsimLab
from hypersdk.providers.connection import VsphereSettings
from hypersdk.providers.vsphere import _reader
from hypersdk.providers.vsphere._provider import open_vsphere_provider
from tests.vsphere.conftest import Cli, KiB, settings_of


def _verified(lab: VcsimLab, ca_file: str | None = "lab") -> VsphereSettings:
    cert = lab.settings().cert_file
    assert cert is not None and cert.is_file()
    return replace(
        settings_of(lab), insecure=False, ca_file=str(cert) if ca_file == "lab" else ca_file
    )


def test_login_and_data_reads_verify_against_the_ca_file(lab: VcsimLab) -> None:
    data = lab.write("/DC0/vm/small", offset=0, length=64 * KiB, seed=5)
    with open_vsphere_provider("/DC0/vm/small", _verified(lab)) as p:
        ctx = p._conn.ssl_context
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        with p.open_backup(None) as session:
            (disk,) = session.disks
            reader = disk.reader
            assert isinstance(reader, _reader.HttpRangeReader)
            # the session's reads trust the CA file: the system store alone would not
            assert reader.pread(0, 64 * KiB) == data
            plain = _reader.make_client(
                p._conn.session_cookie(), ssl_context=ssl.create_default_context(), pool=1
            )
            with plain:
                untrusting = _reader.HttpRangeReader(plain, reader.url, 16 << 20, "disk-2000")
                with pytest.raises(ConnectionFailed) as err:
                    untrusting.pread(0, 4096)
            assert untrusting.requests == 1  # a certificate failure is not retried
    msg = str(err.value)
    assert msg.startswith("disk disk-2000: cannot verify the TLS certificate of the datastore")
    assert "--ca-file" in msg and "\n" not in msg


def test_without_the_ca_file_the_login_fails_in_one_line(lab: VcsimLab) -> None:
    s = lab.settings()
    with pytest.raises(ConnectionFailed) as err:
        open_vsphere_provider("/DC0/vm/small", _verified(lab, ca_file=None))
    msg = str(err.value)
    assert msg.startswith(f"cannot verify the TLS certificate of vSphere {s.host}:{s.port} (")
    assert "--ca-file (HYPERSDK_VSPHERE_CA_FILE or GOVC_TLS_CA_CERTS)" in msg
    assert "pass --insecure" in msg and "\n" not in msg
    # insecure turns verification off for the login (and, by the same context, the reads)
    with open_vsphere_provider("/DC0/vm/small", replace(settings_of(lab), insecure=True)) as p:
        assert p._conn.ssl_context.verify_mode == ssl.CERT_NONE


def test_a_bad_ca_file_is_a_usage_error(lab: VcsimLab, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"cannot read the vSphere CA file .*/missing\.pem: No "):
        open_vsphere_provider(
            "/DC0/vm/small", _verified(lab, ca_file=str(tmp_path / "missing.pem"))
        )
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(UsageError, match=r"junk\.pem holds no usable PEM certificate"):
        open_vsphere_provider("/DC0/vm/small", _verified(lab, ca_file=str(junk)))


def test_hyperexport_takes_the_ca_file_from_the_environment(cli: Cli, lab: VcsimLab) -> None:
    cert = str(lab.settings().cert_file)
    env = {**cli.env, "GOVC_INSECURE": "0", "GOVC_TLS_CA_CERTS": cert}
    args = ["--vm", "/DC0/vm/small", "--output", str(cli.repo), "--block-size", "64K", "--json"]
    proc = cli.run("hyperexport", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["mode"] == "full"
    env["HYPERSDK_VSPHERE_CA_FILE"] = str(cli.tmp / "nowhere.pem")  # wins over GOVC_*
    proc = cli.run("hyperexport", *args[:-1], env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "cannot read the vSphere CA file" in proc.stderr
    # --ca-file wins over both variables
    proc = cli.run("hyperexport", *args, "--ca-file", cert, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["mode"] == "full"


def test_settings_read_the_ca_file_and_the_foreign_snapshot_age() -> None:
    base = {"GOVC_URL": "https://vc.example/sdk", "GOVC_USERNAME": "u"}
    s = VsphereSettings.resolve(env=base)
    assert s is not None and s.ca_file is None and s.foreign_snapshot_max_age_hours == 24.0
    s = VsphereSettings.resolve(env={**base, "GOVC_TLS_CA_CERTS": "/a.pem:/b.pem"})
    assert s is not None and s.ca_files == ["/a.pem", "/b.pem"]
    s = VsphereSettings.resolve(
        env={**base, "GOVC_TLS_CA_CERTS": "/a.pem", "HYPERSDK_VSPHERE_CA_FILE": "/c.pem"}
    )
    assert s is not None and s.ca_file == "/c.pem"
    s = VsphereSettings.resolve(ca_file="/d.pem", env={**base, "HYPERSDK_VSPHERE_CA_FILE": "/c"})
    assert s is not None and s.ca_file == "/d.pem"
    s = VsphereSettings.resolve(env={**base, "HYPERSDK_VSPHERE_FOREIGN_SNAPSHOT_MAX_AGE": "2.5"})
    assert s is not None and s.foreign_snapshot_max_age_hours == 2.5
    for bad in ("0", "-1", "nan", "inf", "1e400", "soon"):
        with pytest.raises(UsageError, match="FOREIGN_SNAPSHOT_MAX_AGE must be a positive"):
            VsphereSettings.resolve(env={**base, "HYPERSDK_VSPHERE_FOREIGN_SNAPSHOT_MAX_AGE": bad})
    with pytest.raises(UsageError, match="positive number of hours"):
        VsphereSettings("h", "u", "p", foreign_snapshot_max_age_hours=float("nan"))
