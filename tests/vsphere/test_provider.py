"""The vSphere provider through its interface, against the lab (and offline objects)."""

from __future__ import annotations

import gzip
import logging
import random
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim

from hypersdk.engine.export import ExportRequest, run_export
from hypersdk.errors import ConnectionFailed, NotFoundError, ProviderError, UsageError
from hypersdk.lab import VcsimLab
from hypersdk.providers.factory import open_provider
from hypersdk.providers.vsphere import VsphereProvider, _inventory, _reader
from hypersdk.repository.repository import Repository
from hypersdk.state.history import History
from tests.vsphere.conftest import KiB, MiB, settings_of

BS = 64 * KiB
Open = Callable[[str], VsphereProvider]


def test_finds_the_vm_with_or_without_slash_and_lists_disks(provider_for: Open) -> None:
    a = provider_for("/DC0/vm/two-disks")
    b = provider_for("DC0/vm/two-disks")
    assert a.identity().vm_id == b.identity().vm_id == a.vm.config.instanceUuid
    ident = a.identity()
    assert (ident.name, ident.platform, ident.locator) == (
        "two-disks",
        "vsphere",
        "/DC0/vm/two-disks",
    )
    status = a.cbt_status()
    assert not status.enabled
    assert status.reason == "Changed block tracking (CBT) is not enabled on this VM"
    d0, d1 = status.disks
    assert (d0.key, d0.path, d0.capacity_bytes, d0.change_id, d0.backing_info) == (
        "disk-2000", "[LocalDS_0] two-disks/two-disks.vmdk", 16 * MiB, "", "FlatVer2",
    )  # fmt: skip
    assert d1.key == "disk-2001" and d1.capacity_bytes == 8 * MiB and d1.cbt_supported


def test_unknown_vm_and_not_a_vm(lab: VcsimLab) -> None:
    with pytest.raises(NotFoundError, match=r"^VM /DC0/vm/nope not found"):
        open_provider("/DC0/vm/nope", settings_of(lab))
    with pytest.raises(NotFoundError, match="not a VM"):
        open_provider("/DC0/vm", settings_of(lab))
    with pytest.raises(UsageError, match="GOVC_URL"):
        open_provider("/DC0/vm/web", None)


def test_enable_and_disable_cbt_with_a_stun_that_leaves_no_snapshot(
    provider_for: Open, lab: VcsimLab
) -> None:
    p = provider_for("/DC0/vm/small")
    p.enable_cbt()
    status = p.cbt_status()
    assert status.enabled, status.reason
    cid = status.disks[0].change_id
    assert cid.endswith("/1")  # active at once: the stun happened
    assert lab.vm("/DC0/vm/small").snapshots == 0
    assert p.check_change_id("disk-2000", cid).valid
    assert not p.check_change_id("disk-2042", cid).valid
    p.enable_cbt()  # idempotent: no new stun
    assert p.cbt_status().disks[0].change_id == cid

    lab.reset_cbt("/DC0/vm/small")
    check = p.check_change_id("disk-2000", cid)
    assert not check.valid
    assert check.reason.startswith("CBT was reset on disk-2000 (change id uuid differs): ")
    assert "\n" not in check.reason

    p.disable_cbt()
    assert not p.cbt_status().enabled
    assert p.check_change_id("disk-2000", cid).reason.startswith("CBT is off on disk-2000")
    assert lab.vm("/DC0/vm/small").snapshots == 0


def test_untrackable_disks_say_why() -> None:
    def disk(backing: Any) -> Any:
        return vim.vm.device.VirtualDisk(key=2000, capacityInKB=1024, backing=backing)  # type: ignore[no-untyped-call]

    rdm = vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo(  # type: ignore[no-untyped-call]
        fileName="[ds] vm/rdm.vmdk", compatibilityMode="physicalMode", diskMode="persistent"
    )
    indep = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(  # type: ignore[no-untyped-call]
        fileName="[ds] vm/vm_1.vmdk", diskMode="independent_persistent"
    )
    delta = vim.vm.device.VirtualDisk.SeSparseBackingInfo(  # type: ignore[no-untyped-call]
        fileName="[ds] vm/vm-000001.vmdk", diskMode="persistent"
    )
    config = SimpleNamespace(hardware=SimpleNamespace(device=[disk(rdm)]))
    (d,) = _inventory.disks(config)
    assert d.cbt_reason == "physical compatibility RDM: vSphere does not track its changes"
    assert "raw device mapping" in d.read_refusal()
    config.hardware.device = [disk(indep)]
    (d,) = _inventory.disks(config)
    assert "independent disk (independent_persistent)" in d.cbt_reason
    config.hardware.device = [disk(delta)]
    (d,) = _inventory.disks(config)
    assert d.backing_type == "SeSparse" and not d.cbt_reason
    assert "delete or consolidate the VM's snapshots" in d.read_refusal()
    old = SimpleNamespace(config=SimpleNamespace(version="vmx-04"), capability=None)
    assert _inventory.vm_cbt_reason(old).startswith("hardware version vmx-04 is below vmx-07")
    no = SimpleNamespace(
        config=SimpleNamespace(version="vmx-13"),
        capability=SimpleNamespace(changeTrackingSupported=False),
    )
    assert "changeTrackingSupported" in _inventory.vm_cbt_reason(no)


def _areas(p: VsphereProvider, since: dict[str, str] | None) -> tuple[Any, int]:
    with p.open_backup(since) as s:
        return [(d.key, d.change_id, d.changed) for d in s.disks], s.query_calls


def test_paging_one_area_per_reply_gives_identical_extents(
    provider_for: Open, lab: VcsimLab
) -> None:
    path = "/DC0/vm/web"
    p = provider_for(path)
    p.enable_cbt()
    for b in (1, 2, 10, 40, 200, 1000):
        lab.write(path, b * BS, length=BS, seed=b)
    (full,), calls = _areas(p, None)
    assert calls == 1 and len(full[2]) == 5
    since = {"disk-2000": full[1]}
    for b in (3, 500, 1001):
        lab.write(path, b * BS + 7, length=10, seed=b)
    (inc,), calls = _areas(p, since)
    assert calls == 1 and [(e.offset, e.length) for e in inc[2]] == [
        (3 * BS, BS), (500 * BS, BS), (1001 * BS, BS)
    ]  # fmt: skip
    lab.config(max_changed_areas=1)
    (inc_paged,), calls = _areas(p, since)
    assert inc_paged[2] == inc[2] and calls == 3
    (full_paged,), calls = _areas(p, None)
    assert calls == 6 and len(full_paged[2]) == 6  # block 3 is allocated now


def test_leftover_snapshot_of_a_crashed_run_is_removed(
    provider_for: Open, lab: VcsimLab, caplog: pytest.LogCaptureFixture
) -> None:
    path = "/DC0/vm/small"
    p = provider_for(path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid of this host whose process has ended
    task = p.vm.CreateSnapshot_Task(
        name="hypersdk-backup-20260101T000000Z-abcdef",
        # the description format before session ids: still understood
        description=f"made by hypersdk host={socket.gethostname()} pid={gone.pid}; safe to delete",
        memory=False,
        quiesce=False,
    )
    WaitForTask(task)  # type: ignore[no-untyped-call]
    assert lab.vm(path).snapshots == 1
    messages: list[str] = []
    p.on_message = messages.append
    with caplog.at_level(logging.WARNING), p.open_backup(None) as s:
        assert lab.vm(path).snapshots == 1  # only the session's own
        assert s.messages == messages
    assert messages == [
        "removed snapshot hypersdk-backup-20260101T000000Z-abcdef of VM small left by an "
        f"interrupted earlier run (pid {gone.pid} on {socket.gethostname()}, which has ended)"
    ]
    assert messages[0] in caplog.text
    assert lab.vm(path).snapshots == 0


def test_a_vm_with_other_snapshots_is_refused_clearly(provider_for: Open, lab: VcsimLab) -> None:
    path = "/DC0/vm/small"
    p = provider_for(path)
    WaitForTask(p.vm.CreateSnapshot_Task(name="before-upgrade", memory=False, quiesce=False))  # type: ignore[no-untyped-call]
    with pytest.raises(ProviderError, match="already has snapshots \\(before-upgrade\\)") as err:
        p.open_backup(None)
    assert "delete or consolidate" in str(err.value)
    assert lab.vm(path).snapshots == 1  # the user's snapshot is not ours to delete


@pytest.mark.parametrize("error", [ProviderError, KeyboardInterrupt])
def test_failure_mid_export_removes_the_snapshot_and_commits_nothing(
    provider_for: Open,
    lab: VcsimLab,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: type[BaseException],
) -> None:
    path = "/DC0/vm/web"
    rng = random.Random(1)
    for i in range(16):
        lab.write(path, i * MiB, rng.randbytes(MiB))
    p = provider_for(path)
    p.enable_cbt()
    history = History(tmp_path / "state")
    request = ExportRequest(output=str(tmp_path / "repo"), incremental=True, block_size=BS)
    full = run_export(p, request, history)
    lab.write(path, 40 * MiB, rng.randbytes(4 * MiB))

    real = _reader.HttpRangeReader.pread
    calls = [0]
    lock = threading.Lock()

    def failing(self: _reader.HttpRangeReader, offset: int, length: int) -> bytes:
        with lock:
            calls[0] += 1
            if calls[0] > 10:
                raise error("injected failure")
        return real(self, offset, length)

    monkeypatch.setattr(_reader.HttpRangeReader, "pread", failing)
    with pytest.raises(error):
        run_export(p, request, history)
    assert lab.vm(path).snapshots == 0
    repo = Repository.open(tmp_path / "repo")
    assert [g.id for g in repo.generations(full.vm)] == [full.generation]
    latest = history.latest(full.vm)
    assert latest is not None and latest.generation == full.generation

    monkeypatch.setattr(_reader.HttpRangeReader, "pread", real)
    inc = run_export(p, request, history)
    assert inc.mode == "incremental" and inc.bytes_read == 4 * MiB
    assert lab.vm(path).snapshots == 0


# -- the Range reader against a tiny local server ------------------------------------
class _Handler(BaseHTTPRequestHandler):
    mode = "ignore-range"
    hits = 0
    seen: ClassVar[list[dict[str, str]]] = []  # the headers of each request

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).hits += 1
        type(self).seen.append(dict(self.headers.items()))
        body = bytes(range(256)) * 16
        if self.mode == "flaky" and type(self).hits < 3:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.mode == "ignore-range":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        first, last = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
        if self.mode == "wrong-range":
            first, last = first + 1, last + 1
        part = body[first : last + 1]
        if self.mode == "short":  # the connection drops mid-body, every time
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(body)}")
            self.send_header("Content-Length", str(len(part)))
            self.end_headers()
            self.wfile.write(part[: len(part) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        total = {"wrong-total": str(len(body) + 512), "star-total": "*"}.get(
            self.mode, str(len(body))
        )
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first}-{last}/{total}")
        if self.mode == "gzip":  # a server that codes the body although told not to
            part = gzip.compress(part)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        self.wfile.write(part)


@pytest.fixture()
def server() -> Iterator[Callable[[str], _reader.HttpRangeReader]]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    # the session's own client (its headers, its TLS context; plain HTTP here)
    client = _reader.make_client(
        ("vmware_soap_session", "s1"), ssl_context=ssl.create_default_context(), pool=2
    )

    def reader(mode: str, coalesce: bool = False) -> _reader.HttpRangeReader:
        _Handler.mode, _Handler.hits, _Handler.seen = mode, 0, []
        url = f"http://127.0.0.1:{srv.server_address[1]}/folder/x-flat.vmdk"
        return _reader.HttpRangeReader(
            client, url, 4096, "disk-2000", backoff=0.01, coalesce=coalesce
        )

    yield reader
    client.close()
    srv.shutdown()
    srv.server_close()


def test_a_200_reply_to_a_range_request_is_refused(server: Any) -> None:
    with pytest.raises(ProviderError, match="ignored the Range request \\(HTTP 200"):
        server("ignore-range").pread(100, 50)
    with pytest.raises(ProviderError, match="does not match the request bytes=100-149"):
        server("wrong-range").pread(100, 50)
    assert server("exact").pread(4090, 16) == bytes(range(250, 256)) + bytes(10)


def test_transient_errors_are_retried_then_reported(server: Any) -> None:
    r = server("flaky")
    assert r.pread(0, 4) == bytes(range(4)) and r.requests == 3
    client = _reader.make_client(("c", "v"), ssl_context=ssl.create_default_context(), pool=1)
    dead = _reader.HttpRangeReader(client, "http://127.0.0.1:9/x", 4096, "disk-2000", backoff=0.01)
    with pytest.raises(ConnectionFailed, match="failed 4 times: ConnectionRefusedError") as err:
        dead.pread(0, 10)
    assert isinstance(err.value, ProviderError)


def test_reads_ask_for_identity_coding_and_check_the_file_size(server: Any) -> None:
    r = server("exact")
    assert r.pread(0, 16) == bytes(range(16))
    (headers,) = _Handler.seen
    assert headers["Accept-Encoding"] == "identity"
    assert headers["Range"] == "bytes=0-15"
    assert headers["Cookie"] == "vmware_soap_session=s1"
    # the right range of a file of another size is another file, not the disk
    with pytest.raises(ProviderError, match="the datastore file is 4608 bytes long by its "):
        server("wrong-total").pread(0, 16)
    assert _Handler.hits == 1  # not retried: it would not change
    with pytest.raises(ProviderError, match="did not say the datastore file's size") as err:
        server("star-total").pread(0, 16)
    assert "\n" not in str(err.value)
    with pytest.raises(ProviderError, match="gzip-coded body although Accept-Encoding"):
        server("gzip").pread(0, 16)


def test_coalesced_reads_keep_every_check(server: Any) -> None:
    """A segment's one large GET goes through the same checks as a block's own."""
    with pytest.raises(ProviderError, match="does not match the request bytes=1024-4095"):
        server("wrong-range", coalesce=True).pread(1024, 1024)
    with pytest.raises(ProviderError, match="the datastore file is 4608 bytes long"):
        server("wrong-total", coalesce=True).pread(0, 1024)
    r = server("flaky", coalesce=True)
    assert r.pread(0, 1024) == bytes(range(256)) * 4 and r.requests == 3
    assert r.pread(1024, 1024) == bytes(range(256)) * 4 and r.requests == 3  # from the segment
    assert [h["Range"] for h in _Handler.seen] == ["bytes=0-4095"] * 3


def test_a_first_read_off_the_block_grid_sets_no_plan(server: Any) -> None:
    """A read that is not a block (a sub-block patch, say) is read as asked, and does
    not make the reader fetch ranges nobody asked for."""
    r = server("exact", coalesce=True)
    assert r.pread(100, 50) == bytes(range(100, 150))
    assert r.pread(1024, 1000) == (bytes(range(256)) * 16)[1024:2024]
    assert [h["Range"] for h in _Handler.seen] == ["bytes=100-149", "bytes=1024-2023"]


def test_a_body_cut_short_is_an_error_never_zeros(server: Any) -> None:
    """A connection that drops mid-body (plain, coalesced) is retried, then reported:
    the missing bytes never read as zeros."""
    for coalesce in (False, True):
        r = server("short", coalesce=coalesce)
        with pytest.raises(ConnectionFailed, match="failed 4 times: short body") as err:
            r.pread(0, 1024)
        assert r.requests == 4 and r.bytes == 0
        assert "\n" not in str(err.value)


@pytest.fixture()
def tls_server(tmp_path: Path) -> Iterator[tuple[str, ssl.SSLContext]]:
    """The tiny server over TLS (a self-signed certificate made here): the reader's
    direct TLS record reads take the same checks."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.socket = server_ctx.wrap_socket(srv.socket, server_side=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(cert))
    yield f"https://127.0.0.1:{srv.server_address[1]}/folder/x-flat.vmdk", client_ctx
    srv.shutdown()
    srv.server_close()


def test_tls_reads_are_exact_and_a_cut_body_is_an_error(
    tls_server: tuple[str, ssl.SSLContext],
) -> None:
    url, ctx = tls_server
    with _reader.make_client(("vmware_soap_session", "s1"), ssl_context=ctx, pool=1) as client:
        _Handler.mode, _Handler.hits, _Handler.seen = "exact", 0, []
        r = _reader.HttpRangeReader(client, url, 4096, "disk-2000", backoff=0.01)
        assert r.pread(0, 4096) == bytes(range(256)) * 16
        assert r.pread(1000, 3096) == (bytes(range(256)) * 16)[1000:]
        _Handler.mode = "short"
        with pytest.raises(ConnectionFailed, match="failed 4 times") as err:
            r.pread(0, 4096)
        assert "\n" not in str(err.value)
