"""A generation served from the repository, read by real NBD clients: nbdinfo, nbdcopy,
qemu-img and qemu-io."""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
from pathlib import Path

import pytest

from hypersdk.access.export import RepositoryExport
from hypersdk.access.serving import BackgroundServer, Listen
from hypersdk.errors import IntegrityError
from hypersdk.nbd import NbdClient, NbdCommandError
from tests.access.conftest import SIZE, Served
from tests.chain import BS
from tests.repository.test_damage import hyperctl


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def test_an_older_generation_served_equals_its_restore(served_repo: Served) -> None:
    s = served_repo
    with (
        RepositoryExport(s.repo, s.first, "disk-0") as export,
        BackgroundServer(export, Listen(socket=str(s.tmp / "nbd.sock"))) as server,
    ):
        info = _run("nbdinfo", "--json", server.uri)
        doc = json.loads(info.stdout)["exports"][0]
        assert doc["export-size"] == SIZE and doc["is_read_only"]
        mapped = _run("nbdinfo", "--map", server.uri).stdout.split("\n")
        holes = [line.split()[:2] for line in mapped if "hole,zero" in line]
        data = [line.split()[:2] for line in mapped if line.strip().endswith("data")]
        # zero blocks are holes: [4, 10), [11, 63); data: [0, 4), [10, 11), [63, 64)
        assert holes == [[str(4 * BS), str(6 * BS)], [str(11 * BS), str(52 * BS)]]
        assert data == [["0", str(4 * BS)], [str(10 * BS), str(BS)], [str(63 * BS), str(BS)]]
        out = s.tmp / "copy.raw"
        assert _run("nbdcopy", server.uri, str(out)).returncode == 0
        assert out.read_bytes() == s.images[s.first.id].read_bytes()
        cmp = _run("qemu-img", "compare", "-f", "raw", str(s.images[s.first.id]), server.uri)
        assert cmp.returncode == 0, cmp.stdout
        other = _run("qemu-img", "compare", "-f", "raw", str(s.images[s.second.id]), server.uri)
        assert other.returncode == 1  # and the generations do differ
    assert export.bytes_read > 0


def test_two_clients_at_once_with_a_small_cache(served_repo: Served) -> None:
    s = served_repo
    with (
        RepositoryExport(s.repo, s.second, "disk-0", cache_bytes=3 * BS) as export,
        BackgroundServer(export, Listen(socket=str(s.tmp / "nbd.sock"))) as server,
    ):
        outs = [s.tmp / f"copy{i}.raw" for i in range(2)]
        procs = [subprocess.Popen(["nbdcopy", "--connections=2", server.uri, str(o)]) for o in outs]
        assert [proc.wait(60) for proc in procs] == [0, 0]
        assert export.cache.size <= 3 * BS  # bounded in bytes, whatever was read
        assert export.cache.misses >= 7  # every data block was decoded at least once
    want = s.images[s.second.id].read_bytes()
    assert all(o.read_bytes() == want for o in outs)


def test_reads_within_a_block_hit_the_cache(served_repo: Served) -> None:
    s = served_repo
    with RepositoryExport(s.repo, s.first, "disk-0") as export:
        pieces = [export.read(off, 4096) for off in range(0, BS, 4096)]
        assert export.cache.misses == 1 and export.cache.hits == len(pieces) - 1
        got = b"".join(p.data or bytes(p.length) for ps in pieces for p in ps)
        assert got == s.images[s.first.id].read_bytes()[:BS]


def test_a_damaged_chunk_is_an_error_never_served(served_repo: Served) -> None:
    s = served_repo
    index = s.repo.load_index(s.second, "disk-0")
    block, cid = next(iter(index.chunks()))
    path = s.repo.layout.chunk(cid)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    with (
        RepositoryExport(s.repo, s.second, "disk-0") as export,
        BackgroundServer(export, Listen(socket=str(s.tmp / "nbd.sock"))) as server,
    ):
        with NbdClient.connect(f"unix:{s.tmp / 'nbd.sock'}") as client:
            with pytest.raises(NbdCommandError, match=cid.hex()):
                client.pread(block * BS, 512)
            tail = client.pread(SIZE - BS, BS)  # the connection goes on
            assert tail == s.images[s.second.id].read_bytes()[SIZE - BS :]
        assert _run("nbdcopy", server.uri, str(s.tmp / "bad.raw")).returncode != 0
    with RepositoryExport(s.repo, s.second, "disk-0") as export, pytest.raises(IntegrityError):
        export.read(block * BS, 512)


def test_writes_stay_in_the_overlay_and_the_repository_is_unchanged(served_repo: Served) -> None:
    s = served_repo
    before = _tree(s.repo.root)
    overlay_dir = s.tmp / "overlay"
    overlay_dir.mkdir()
    with (
        RepositoryExport(
            s.repo, s.second, "disk-0", writable=True, overlay_dir=overlay_dir
        ) as export,
        BackgroundServer(export, Listen(socket=str(s.tmp / "nbd.sock"))) as server,
    ):
        assert "is_read_only: false" in _run("nbdinfo", server.uri).stdout
        io = _run(
            "qemu-io", "-f", "raw",
            "-c", "write -P 0xab 1000 70000",  # across a block boundary, partial blocks
            "-c", f"write -P 0xcd {5 * BS} 512",  # into a zero block
            "-c", f"write -z {2 * BS} {BS}",  # a whole block zeroed
            "-c", f"discard {3 * BS} {BS}",
            "-c", "flush",
            "-c", "read -P 0xab 1000 70000",
            "-c", f"read -P 0 {2 * BS} {2 * BS}",
            server.uri,
        )  # fmt: skip
        assert io.returncode == 0 and "Pattern verification failed" not in io.stdout, io.stdout
        got = s.tmp / "written.raw"
        assert _run("nbdcopy", server.uri, str(got)).returncode == 0
        want = bytearray(s.images[s.second.id].read_bytes())
        want[1000:71000] = b"\xab" * 70000
        want[5 * BS : 5 * BS + 512] = b"\xcd" * 512
        want[2 * BS : 4 * BS] = bytes(2 * BS)
        assert got.read_bytes() == bytes(want)
        mapped = _run("nbdinfo", "--map", server.uri).stdout
        # blocks 2 and 3 (zeroed, discarded) join the zero block 4 in one hole
        assert [str(2 * BS), str(3 * BS), "3"] in [line.split()[:3] for line in mapped.splitlines()]
        assert list(overlay_dir.iterdir()) == []  # the overlay has no name to leave behind
    assert _tree(s.repo.root) == before
    proc = hyperctl("verify", "--output", str(s.repo.root), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"]
    cmp = _run("qemu-img", "compare", "-f", "raw", "-F", "raw",
               str(s.images[s.second.id]), str(got))  # fmt: skip
    assert cmp.returncode == 1


def test_concurrent_partial_writes_to_one_block_keep_both(served_repo: Served) -> None:
    s = served_repo
    with RepositoryExport(s.repo, s.second, "disk-0", writable=True) as export:
        threads = [
            threading.Thread(target=export.write, args=(i * 4096, bytes([i + 1]) * 100))
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        block = b"".join(p.data or bytes(p.length) for p in export.read(0, BS))
        base = s.images[s.second.id].read_bytes()
        for i in range(8):
            assert block[i * 4096 : i * 4096 + 100] == bytes([i + 1]) * 100
            assert block[i * 4096 + 100 : (i + 1) * 4096] == base[i * 4096 + 100 : (i + 1) * 4096]


def test_gc_is_refused_while_a_generation_is_served(served_repo: Served) -> None:
    s = served_repo
    with RepositoryExport(s.repo, s.first, "disk-0"):
        proc = hyperctl("gc", "--output", str(s.repo.root))
        assert proc.returncode == 1 and "locked" in proc.stderr, proc.stderr
    assert hyperctl("gc", "--output", str(s.repo.root)).returncode == 0
