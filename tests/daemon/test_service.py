"""Auth, configuration, errors and service routes of a live hypervisord."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from hypersdk.daemon.app import create_app
from hypersdk.daemon.config import DaemonConfig, load_config
from hypersdk.errors import UsageError
from tests.daemon.live import Hypervisord, free_port
from tests.rigs.qsd import MiB, QemuStorageDaemon


def test_auth_on(tmp_path: Path) -> None:
    with Hypervisord(tmp_path, token="s3cret-token-0123456789") as hvd:
        anon = hvd.client(token="")
        assert anon.get("/health").json()["status"] == "ok"
        for method, path in (
            ("GET", "/exports"),
            ("GET", "/openapi.json"),
            ("GET", "/metrics"),
            ("POST", "/cbt/status"),
            ("GET", "/exports/j-000000000000/events"),
        ):
            r = anon.request(method, path, json={"vm_path": "qemu:/x"})
            assert r.status_code == 401, (path, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
        wrong = hvd.client(token="s3cret-token-012345678")
        assert wrong.get("/exports").status_code == 401
        assert wrong.get("/exports").json()["error"]["message"] == "wrong API token"
        raw = httpx_get(hvd.base_url + "/exports", {"Authorization": "s3cret-token-0123456789"})
        assert raw == 401  # the scheme is required
        assert hvd.client().get("/exports").json() == {"jobs": []}
        assert hvd.client().get("/openapi.json").json()["info"]["title"] == "hypervisord"


def httpx_get(url: str, headers: dict[str, str]) -> int:
    import httpx

    return httpx.get(url, headers=headers).status_code


def test_errors(hvd: Hypervisord, qsd: QemuStorageDaemon, tmp_path: Path) -> None:
    http = hvd.client()
    assert http.get("/exports").status_code == 200
    assert http.get("/health").json() == {"status": "ok", "version": "0.1.0"}
    doc = http.get("/openapi.json").json()
    assert {"/cbt/enable", "/cbt/disable", "/cbt/status", "/incremental/analyze"} <= set(
        doc["paths"]
    )

    def err(r: object, status: int, code: str) -> str:
        import httpx

        assert isinstance(r, httpx.Response)
        assert r.status_code == status, r.text
        body = r.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
        assert body["error"]["code"] == code
        assert "Traceback" not in r.text
        message: str = body["error"]["message"]
        return message

    # 404
    err(http.get("/exports/j-nope"), 404, "not_found")
    err(http.delete("/exports/j-nope"), 404, "not_found")
    err(http.get("/exports/j-nope/events"), 404, "not_found")
    err(http.get("/nowhere"), 404, "not_found")
    err(http.get("/generations"), 404, "not_found")  # default repository not created yet
    err(http.get("/generations", params={"output": str(tmp_path / "none")}), 404, "not_found")
    err(http.post("/verifications", json={}), 404, "not_found")
    # 400: malformed or non-object bodies
    bad = {"content": b"{not json", "headers": {"content-type": "application/json"}}
    err(http.post("/cbt/status", **bad), 400, "bad_request")  # type: ignore[arg-type]
    err(http.post("/exports", json=["vm_path"]), 400, "bad_request")
    err(http.post("/exports"), 400, "bad_request")
    # 422: invalid fields
    err(http.post("/cbt/enable", json={}), 422, "invalid_argument")
    err(http.post("/cbt/enable", json={"vm_path": ""}), 422, "invalid_argument")
    err(http.post("/cbt/enable", json={"vm_path": 5}), 422, "invalid_argument")
    for extra in (
        {"parallel": 0},
        {"compression": "gzip"},
        {"block_size": 1000},
        {"block_size": 3 * MiB},
        {"output": "relative/repo"},
        {"max_incremental_age_days": 0},
    ):
        m = err(
            http.post("/exports", json={"vm_path": qsd.locator, **extra}), 422, "invalid_argument"
        )
        assert m
    err(http.get("/exports", params={"state": "sleeping"}), 422, "invalid_argument")
    err(http.get("/exports", params={"limit": 0}), 422, "invalid_argument")
    err(http.post("/restores", json={"vm": "v", "to": "rel.raw"}), 422, "invalid_argument")
    existing = tmp_path / "exists.raw"
    existing.write_bytes(b"")
    err(http.post("/restores", json={"vm": "v", "to": str(existing)}), 422, "invalid_argument")
    err(http.post("/verifications", json={"generation": "latest"}), 422, "invalid_argument")
    # 405, 404 for a socket that does not exist, 502 for one nobody answers on
    err(http.put("/exports"), 405, "method_not_allowed")
    gone = f"qemu:{tmp_path / 'no-such.sock'}"
    err(http.post("/cbt/status", json={"vm_path": gone}), 404, "not_found")
    err(http.post("/exports", json={"vm_path": gone}), 404, "not_found")
    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(dead))  # the file stays, nobody listens
    err(http.post("/cbt/status", json={"vm_path": f"qemu:{dead}"}), 502, "connection_failed")
    err(http.post("/cbt/enable", json={"vm_path": "/dc/vm/x"}), 422, "invalid_argument")
    # a failing export job: the error is in the job, not the POST
    r = http.post("/exports", json={"vm_path": f"qemu:{dead}"})
    assert r.status_code == 202
    from tests.daemon.live import wait_job

    job = wait_job(http, r.json()["id"])
    assert job["state"] == "failed" and job["error"]["code"] == "connection_failed"


def test_cbt_routes(hvd: Hypervisord, qsd: QemuStorageDaemon) -> None:
    http = hvd.client()
    vm = {"vm_path": qsd.locator}
    off = http.post("/cbt/status", json=vm).json()
    assert off["cbt_enabled"] is False and off["can_incremental"] is False
    assert off["last_export"] is None and off["vm_path"] == qsd.locator
    assert set(off) == {
        "vm_path",
        "cbt_enabled",
        "disks",
        "last_export",
        "can_incremental",
        "reason",
    }
    disk = off["disks"][0]
    assert disk["key"] == "disk0" and disk["capacity_bytes"] == 32 * MiB
    assert set(disk) >= {"key", "path", "capacity_bytes", "change_id", "backing_info"}
    r = http.post("/cbt/enable", json=vm)
    assert r.json() == {"success": True, "message": f"CBT enabled successfully for {qsd.locator}"}
    assert http.post("/cbt/status", json=vm).json()["cbt_enabled"] is True
    a = http.post("/incremental/analyze", json=vm).json()
    assert set(a) == {
        "vm_path", "can_incremental", "reason", "last_export", "current_disks",
        "estimated_changed_bytes", "estimated_savings_bytes", "estimated_duration",
    }  # fmt: skip
    assert a["can_incremental"] is False and a["estimated_changed_bytes"] is None
    assert a["current_disks"][0]["key"] == "disk0"
    r = http.post("/cbt/disable", json=vm)
    assert r.json() == {"success": True, "message": f"CBT disabled successfully for {qsd.locator}"}
    assert http.post("/cbt/status", json=vm).json()["cbt_enabled"] is False


def test_non_loopback_without_tls_is_refused(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "hypersdk.daemon.main", "--listen", "0.0.0.0",
         "--port", str(free_port()), "--state-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "non-loopback" in lines[0] and "--tls-cert" in lines[0]


def test_config_sources(tmp_path: Path) -> None:
    toml = tmp_path / "d.toml"
    pem = tmp_path / "x.pem"
    pem.write_text("not checked here")
    toml.write_text(
        'port = 9999\noutput = "/srv/repo"\nmax_concurrent_exports = 3\n'
        'api_token = "t-0123456789abcdef"\nlisten = "0.0.0.0"\n'
        f'tls_cert = "{pem}"\ntls_key = "{pem}"\nallow_paths = ["{tmp_path}"]\n'
        "allow_devices = true\nmax_event_streams = 5\n"
        '[vsphere]\nserver = "https://vc/sdk"\nusername = "u"\n'
        f'ca_file = "{pem}"\nforeign_snapshot_max_age_hours = 2.5\n'
    )
    toml.chmod(0o600)
    cfg = load_config(config_file=str(toml), env={})
    assert (cfg.port, cfg.output, cfg.max_concurrent_exports, cfg.listen) == (
        9999, "/srv/repo", 3, "0.0.0.0",
    )  # fmt: skip
    assert cfg.api_token == "t-0123456789abcdef"
    assert cfg.vsphere is not None and cfg.vsphere.username == "u"
    assert cfg.vsphere.ca_file == str(pem) and cfg.vsphere.foreign_snapshot_max_age_hours == 2.5
    assert (cfg.tls_cert, cfg.tls_key, cfg.allow_paths) == (str(pem), str(pem), (str(tmp_path),))
    assert cfg.allow_devices is True and cfg.max_event_streams == 5
    env = {
        "HYPERSDK_PORT": "7000",
        "HYPERSDK_API_TOKEN": "tok-env-0123456789",
        "HYPERSDK_STATE_DIR": "/s",
    }
    cfg = load_config(config_file=str(toml), env=env, port=7001)
    assert (
        cfg.port == 7001 and cfg.api_token == "tok-env-0123456789" and cfg.state_dir == Path("/s")
    )
    assert "tok-env-0123456789" not in repr(cfg)
    # the environment's CA file (govc's name too) wins over the file's
    cfg = load_config(config_file=str(toml), env={"GOVC_TLS_CA_CERTS": "/env.pem"})
    assert cfg.vsphere is not None and cfg.vsphere.ca_file == "/env.pem"
    toml.write_text('[vsphere]\nserver = "s"\nusername = "u"\nforeign_snapshot_max_age_hours = "x"')
    with pytest.raises(UsageError, match="foreign_snapshot_max_age_hours"):
        load_config(config_file=str(toml), env={})
    with pytest.raises(UsageError, match="non-loopback"):
        load_config(listen="10.0.0.1", env={})
    with pytest.raises(UsageError):
        load_config(config_file=str(tmp_path / "missing.toml"), env={})
    (tmp_path / "bad.toml").write_text("port = [")
    with pytest.raises(UsageError):
        load_config(config_file=str(tmp_path / "bad.toml"), env={})
    assert load_config(listen="::1", env={}).listen == "::1"


def test_unexpected_error_is_generic_500(tmp_path: Path) -> None:
    app = create_app(DaemonConfig(state_dir=tmp_path), token="t" * 16)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.get("/boom", headers={"Authorization": "Bearer " + "t" * 16})

    r = asyncio.run(call())
    assert r.status_code == 500 and "secret" not in r.text
    assert r.json() == {
        "error": {"code": "internal_error", "message": "internal error (see the daemon log)"}
    }
