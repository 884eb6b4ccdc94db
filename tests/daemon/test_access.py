"""Who may call hypervisord and which paths a call may name (docs/api.md, "Access"):
the token (always, made in the state folder when none is set), allowed folders for
every path (repository, restore target, qcow2 image and its whole backing chain, QMP
and NBD sockets), the loopback Host check, the body limit, JSON-only bodies, the bound
on event streams and the refusals at start. All against a live daemon."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hypersdk.daemon.jobs import Job, JobKind
from tests.daemon.live import Hypervisord, free_port
from tests.rigs.qsd import MiB, QemuStorageDaemon


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run_main(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    return subprocess.run(
        [sys.executable, "-m", "hypersdk.daemon.main", "--port", str(free_port()), *args],
        capture_output=True, text=True, env={**base, **(env or {})}, timeout=30, check=False,
    )  # fmt: skip


def one_line_usage_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hypervisord: error: "), proc.stderr
    return lines[0]


# -- the token ---------------------------------------------------------------------


def test_token_file_is_made_private_and_reused(tmp_path: Path) -> None:
    hvd = Hypervisord(tmp_path / "hvd")
    hvd.state_dir.mkdir(mode=0o755)
    os.chmod(hvd.state_dir, 0o755)  # an existing, too open state folder is made 0700
    with hvd:
        token_file = hvd.state_dir / "api-token"
        assert mode(hvd.state_dir) == 0o700 and mode(token_file) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32 and hvd.token == token
        # on loopback too: no token, a wrong one -> 401; /health stays open
        for tok in ("", token[:-1] + ("x" if token[-1] != "x" else "y")):
            r = hvd.client(token=tok).get("/exports")
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert hvd.client(token="").get("/health").status_code == 200
        assert hvd.client().get("/exports").status_code == 200
        hvd.stop()
        hvd.start()  # a restart reuses the token
        assert (hvd.state_dir / "api-token").read_text().strip() == token
        assert hvd.client(token=token).get("/exports").status_code == 200


def test_configured_token_wins_and_no_file_is_made(tmp_path: Path) -> None:
    with Hypervisord(tmp_path, token="configured-token-0123") as hvd:
        assert hvd.client().get("/exports").status_code == 200
        assert not (hvd.state_dir / "api-token").exists()


def test_refusals_at_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # a configured token shorter than 16 characters
    proc = run_main("--state-dir", str(state), env={"HYPERSDK_API_TOKEN": "short-token"})
    assert "shorter than 16" in one_line_usage_error(proc)
    # a token file others can read (it may have leaked): refused, not repaired
    state.mkdir(mode=0o700)
    (state / "api-token").write_text("leaked-token-0123456789\n")
    os.chmod(state / "api-token", 0o644)
    line = one_line_usage_error(run_main("--state-dir", str(state)))
    assert "group or others" in line and mode(state / "api-token") == 0o644
    (state / "api-token").unlink()
    # a token file that is a symlink
    (tmp_path / "elsewhere").write_text("elsewhere-token-0123456789\n")
    (state / "api-token").symlink_to(tmp_path / "elsewhere")
    assert "symbolic link" in one_line_usage_error(run_main("--state-dir", str(state)))
    # a config file readable by the group (it can hold the token and vSphere password)
    config = tmp_path / "d.toml"
    config.write_text('api_token = "config-token-0123456789"\n')
    os.chmod(config, 0o640)
    line = one_line_usage_error(run_main("--config", str(config), "--state-dir", str(state)))
    assert "group or others" in line and str(config) in line
    # an allowed folder that does not exist
    line = one_line_usage_error(
        run_main("--allow-path", str(tmp_path / "nope"), "--state-dir", str(state))
    )
    assert "not an existing folder" in line
    # TLS needs both files, and they must exist
    line = one_line_usage_error(run_main("--tls-cert", str(config), "--state-dir", str(state)))
    assert "both --tls-cert and --tls-key" in line
    missing = str(tmp_path / "missing.pem")
    line = one_line_usage_error(
        run_main("--tls-cert", missing, "--tls-key", missing, "--state-dir", str(state))
    )
    assert "not a readable file" in line


def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-subj", "/CN=localhost", "-days", "1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    args = ("--tls-cert", str(cert), "--tls-key", str(key))
    with Hypervisord(tmp_path / "hvd", args=args) as hvd:
        assert hvd.base_url.startswith("https://")
        # (clients closed: an idle TLS connection would hold the daemon's stop)
        with hvd.client() as http, hvd.client(token="") as anon:
            assert http.get("/exports").json() == {"jobs": []}
            assert anon.get("/exports").status_code == 401
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on that port
            httpx.get(f"http://127.0.0.1:{hvd.port}/health", timeout=5)


# -- allowed paths -----------------------------------------------------------------


@pytest.fixture
def inside(tmp_path: Path) -> Path:
    folder = tmp_path / "allowed"
    folder.mkdir()
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    qemu_img("create", "-q", "-f", "raw", str(folder / "base.raw"), str(MiB))
    qemu_img("create", "-q", "-f", "qcow2", str(folder / "disk.qcow2"), str(MiB))
    (folder / "present.raw").write_bytes(b"x")
    return folder


@pytest.fixture
def locked(tmp_path: Path, inside: Path) -> Iterator[Hypervisord]:
    """A daemon that may use only ``inside`` (its default repository is inside/repo)."""
    with Hypervisord(tmp_path / "hvd", output=inside / "repo", allow=(inside,)) as hvd:
        yield hvd


def forbidden(r: httpx.Response) -> str:
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden_path", r.text
    message: str = r.json()["error"]["message"]
    assert "Traceback" not in message
    return message


def same_message(
    http: httpx.Client, route: str, base: dict[str, str], field: str, present: str, missing: str
) -> None:
    """An outside path is refused with one message whether it exists or not."""
    a = forbidden(http.post(route, json={**base, field: present}))
    b = forbidden(http.post(route, json={**base, field: missing}))

    def path_of(value: str) -> str:
        return value.partition(":")[2] if value.startswith(("qemu:", "qcow2:")) else value

    assert a.replace(path_of(present), "P") == b.replace(path_of(missing), "P"), (a, b)


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in folder.rglob("*")}


def test_outside_paths_are_forbidden_before_anything_is_made(
    locked: Hypervisord, inside: Path, outside: Path, qsd: QemuStorageDaemon
) -> None:
    http = locked.client()
    before = snapshot(outside)
    qemu_img("create", "-q", "-f", "qcow2", str(inside / "ok.qcow2"), str(MiB))
    ok_vm = f"qcow2:{inside / 'ok.qcow2'}"

    # the repository
    vm = {"vm_path": ok_vm}
    same_message(http, "/exports", vm, "output", str(outside / "present.raw"), str(outside / "r"))
    r = http.post("/exports", json={"vm_path": ok_vm, "output": str(outside / "repo")})
    forbidden(r)
    forbidden(http.post("/cbt/status", json={"vm_path": ok_vm, "output": str(outside)}))
    forbidden(http.post("/incremental/analyze", json={"vm_path": ok_vm, "output": str(outside)}))
    forbidden(http.post("/verifications", json={"output": str(outside)}))
    forbidden(http.get("/generations", params={"output": str(outside)}))
    # ... also through a link inside that points outside
    (inside / "link").symlink_to(outside)
    forbidden(http.post("/exports", json={"vm_path": ok_vm, "output": str(inside / "link/r")}))

    # a restore target
    same_message(
        http, "/restores", {"vm": "v"}, "to", str(outside / "present.raw"), str(outside / "n.raw")
    )
    forbidden(http.post("/restores", json={"vm": "v", "to": str(inside / "link/new.raw")}))

    # a qcow2 image
    same_message(
        http, "/cbt/status", {}, "vm_path", f"qcow2:{outside / 'disk.qcow2'}", f"qcow2:{outside}/m"
    )
    forbidden(http.post("/exports", json={"vm_path": f"qcow2:{outside / 'disk.qcow2'}"}))

    # QMP and NBD sockets (a live QEMU outside; nothing may be added to it)
    exports_before = qsd.export_ids()
    same_message(
        http, "/cbt/status", {}, "vm_path", f"qemu:{qsd.qmp_path}", f"qemu:{outside / 'q.sock'}"
    )
    forbidden(http.post("/exports", json={"vm_path": f"qemu:{qsd.qmp_path}"}))
    (inside / "qmp.sock").symlink_to(qsd.qmp_path)
    forbidden(http.post("/cbt/enable", json={"vm_path": f"qemu:{inside / 'qmp.sock'}"}))
    nbd_outside = f"qemu:{inside / 'none.sock'}?nbd={qsd.nbd_path}"
    m = forbidden(http.post("/exports", json={"vm_path": nbd_outside}))
    assert "NBD socket" in m
    assert qsd.export_ids() == exports_before
    assert qsd.bitmaps("disk0") == {}

    # nothing was created: no repository, no restore file, no job (so no qemu-nbd)
    assert snapshot(outside) == before
    assert not (inside / "repo").exists()
    assert http.get("/exports").json() == {"jobs": []}


def test_backing_chain_and_data_file_must_stay_inside(
    locked: Hypervisord, inside: Path, outside: Path
) -> None:
    http = locked.client()
    before = snapshot(outside)
    base = outside / "base.raw"

    def refused(image: Path, word: str) -> None:
        vm = f"qcow2:{image}"
        for route in ("/cbt/status", "/exports", "/cbt/enable"):
            m = forbidden(http.post(route, json={"vm_path": vm}))
            assert word in m, m

    # a backing file outside, by absolute and by relative name
    top = inside / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(top))
    refused(top, "backing file")
    rel = inside / "rel.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "../outside/base.raw", "-F", "raw",
             str(rel), str(MiB))  # fmt: skip
    refused(rel, "backing file")
    # two layers down: top -> mid (inside) -> base (outside)
    mid = inside / "mid.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(outside / "disk.qcow2"), "-F", "qcow2",
             str(mid))  # fmt: skip
    deep = inside / "deep.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", str(deep))
    refused(deep, "backing file")
    # a name that is not UTF-8, through a link inside that leads outside: checked as the
    # very bytes QEMU would open
    os.symlink(outside, os.fsencode(inside) + b"/\xff")
    odd = inside / "odd.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", os.fsdecode(b"\xff/base.raw"), "-F",
             "raw", str(odd), str(MiB))  # fmt: skip
    refused(odd, "backing file")
    # json: and protocol backing names, whatever they point at
    spec = {"driver": "raw", "file": {"driver": "file", "filename": str(inside / "x.raw")}}
    for name in ("json:" + json.dumps(spec), f"nbd:unix:{inside / 'n.sock'}"):
        image = inside / "proto.qcow2"
        image.unlink(missing_ok=True)
        qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", name, "-F", "raw", str(image),
                 str(MiB))  # fmt: skip
        refused(image, "json: and protocols are refused")
    # an external data file outside
    data = inside / "data.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={outside / 'data.raw'}",
             str(data), str(MiB))  # fmt: skip
    before[str(outside / "data.raw")] = (outside / "data.raw").stat().st_size
    refused(data, "data file")

    assert snapshot(outside) == before
    assert not (inside / "repo").exists()
    assert http.get("/exports").json() == {"jobs": []}
    # a chain wholly inside is fine: top2 -> mid2 -> base2, all in the allowed folder
    qemu_img("create", "-q", "-f", "raw", str(inside / "base2.raw"), str(MiB))
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base2.raw", "-F", "raw",
             str(inside / "mid2.qcow2"))  # fmt: skip
    qemu_img("create", "-q", "-f", "qcow2", "-b", "mid2.qcow2", "-F", "qcow2",
             str(inside / "top2.qcow2"))  # fmt: skip
    r = http.post("/cbt/status", json={"vm_path": f"qcow2:{inside / 'top2.qcow2'}"})
    assert r.status_code == 200, r.text


def test_restore_target_must_be_a_regular_file(
    locked: Hypervisord, inside: Path, outside: Path
) -> None:
    http = locked.client()
    fifo = inside / "fifo"
    os.mkfifo(fifo)
    (inside / "to-outside").symlink_to(outside / "present.raw")
    (inside / "dir").mkdir()
    for target in (fifo, inside / "to-outside", inside / "dir"):
        m = forbidden(http.post("/restores", json={"vm": "v", "to": str(target)}))
        assert "not a regular file" in m or "outside" in m, m
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert (outside / "present.raw").read_bytes() == b"x"
    # a regular file passes the path rules (and then needs force; no repository yet: 404)
    (inside / "file.raw").write_bytes(b"")
    r = http.post("/restores", json={"vm": "v", "to": str(inside / "file.raw"), "force": True})
    assert r.status_code == 404, r.text


# -- the HTTP guards -----------------------------------------------------------------


def test_host_header_must_be_loopback(locked: Hypervisord) -> None:
    http = locked.client()
    for host in ("evil.example", f"evil.example:{locked.port}", "10.0.0.1", "127.0.0.1.nip.io"):
        for path in ("/exports", "/health"):
            r = http.get(path, headers={"Host": host})
            assert r.status_code == 421, (host, r.text)
            assert r.json()["error"]["code"] == "misdirected_request"
    for host in ("localhost", f"localhost:{locked.port}", "127.0.0.1", "127.1.2.3:9", "[::1]:80"):
        assert http.get("/exports", headers={"Host": host}).status_code == 200, host


def test_body_limit_and_json_content_type(locked: Hypervisord, inside: Path) -> None:
    http = locked.client()
    big = json.dumps({"vm_path": "/dc/vm/x", "pad": "x" * (65 * 1024)}).encode()
    r = http.post("/cbt/status", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(80):
            yield b" " * 1024

    r = http.post("/cbt/status", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    small = json.dumps({"vm_path": "/dc/vm/x", "pad": "x" * (60 * 1024)}).encode()
    r = http.post("/cbt/status", content=small, headers={"Content-Type": "application/json"})
    assert r.status_code == 422  # read and parsed: no vSphere configured

    # a JSON body without a JSON Content-Type is refused (a browser sends text/plain
    # cross-origin without a preflight)
    body = json.dumps({"vm_path": f"qcow2:{inside / 'x.qcow2'}"}).encode()
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "text/plain; a=b"}, {}):
        r = http.post("/cbt/enable", content=body, headers=headers)
        assert r.status_code == 415, (headers, r.text)
        assert r.json()["error"]["code"] == "unsupported_media_type"
    r = http.post("/cbt/enable", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 404  # accepted: the image does not exist


def test_event_streams_are_bounded(tmp_path: Path) -> None:
    env = {"HYPERSDK_MAX_EVENT_STREAMS": "2"}
    with Hypervisord(tmp_path, env=env) as hvd:
        # jobs that stay queued (written where the daemon keeps them; no worker runs them)
        ids = []
        with sqlite3.connect(hvd.state_dir / "daemon" / "jobs.db") as db:
            for _ in range(3):
                job = Job.new(JobKind.EXPORT, "/dc/vm/x", None)
                db.execute(
                    "INSERT INTO jobs (id, kind, vm_path, state, doc) VALUES (?, ?, ?, ?, ?)",
                    (job.id, "export", "/dc/vm/x", "queued", json.dumps(job.to_json())),
                )
                ids.append(job.id)
        http = hvd.client()
        with http.stream("GET", f"/exports/{ids[0]}/events") as one:
            assert one.status_code == 200
            with http.stream("GET", f"/exports/{ids[1]}/events") as two:
                assert two.status_code == 200
                r = http.get(f"/exports/{ids[2]}/events")
                assert r.status_code == 429, r.text
                assert r.json()["error"]["code"] == "too_many_streams"
                assert http.get(f"/exports/{ids[2]}").status_code == 200  # polling still works
        # closed streams free their slots (once the daemon sees the disconnect: it looks
        # between two polls of the job)
        deadline = time.monotonic() + 5
        while True:
            with http.stream("GET", f"/exports/{ids[2]}/events") as three:
                if three.status_code == 200:
                    assert next(three.iter_lines()).startswith("event: job")
                    break
                assert three.status_code == 429
            assert time.monotonic() < deadline, "the closed streams kept their slots"
            time.sleep(0.05)
