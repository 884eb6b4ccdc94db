"""The error table (docs/errors.md) through the daemon: each kind made to happen, one
request each, answers its status and code, with a one-line message and no traceback."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from tests.cli.named_repo import named_repo
from tests.daemon.live import Hypervisord, wait_job

# (what, method, path, JSON body or query, status, code); {repo} {bad} {broken} {tmp}
# are filled in. A body is sent as JSON, a query for GET.
CASES: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    ("VM not held", "GET", "/generations", {"output": "{repo}", "vm": "nope"}, 404, "not_found"),
    ("VM not held", "POST", "/restores",
     {"output": "{repo}", "vm": "qcow2:/x.qcow2", "to": "{tmp}/o.raw"}, 404, "not_found"),
    ("VM not held", "POST", "/verifications", {"output": "{repo}", "vm": "/DC0/vm/db"},
     404, "not_found"),
    ("image missing", "POST", "/exports",
     {"vm_path": "qcow2:{tmp}/none.qcow2", "output": "{repo}"}, 404, "not_found"),
    ("socket missing", "POST", "/cbt/status", {"vm_path": "qemu:{tmp}/none.sock"},
     404, "not_found"),
    ("job missing", "GET", "/exports/j-000000000000", {}, 404, "not_found"),
    ("ambiguous name", "GET", "/generations", {"output": "{repo}", "vm": "twin"},
     422, "invalid_argument"),
    ("bad input", "POST", "/restores", {"output": "{repo}", "vm": "web", "to": "o.raw"},
     422, "invalid_argument"),
    ("bad input", "POST", "/restores", {"output": "{repo}", "vm": "web", "to": "{tmp}/a.raw"},
     422, "invalid_argument"),  # exists, no force
    ("forbidden path", "GET", "/generations", {"output": "/etc"}, 403, "forbidden_path"),
    ("damaged", "POST", "/restores", {"output": "{bad}", "vm": "vm-b", "to": "{tmp}/o.raw"},
     409, "integrity_error"),
    ("hypervisor unreachable", "POST", "/cbt/status", {"vm_path": "qemu:{tmp}/dead.sock"},
     502, "connection_failed"),
    ("repository unusable", "GET", "/generations", {"output": "{broken}"},
     500, "repository_error"),
]  # fmt: skip


def test_each_kind_answers_its_status(tmp_path: Path) -> None:
    repo = named_repo(tmp_path)
    bad = named_repo(tmp_path / "bad")
    (manifest,) = (bad.root / "vms" / "vm-b" / "generations").glob("*.json")
    manifest.write_text("{")
    (tmp_path / "broken" / "config").mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "dead.sock"))  # the file stays, nobody listens
    places = {
        "repo": str(repo.root),
        "bad": str(bad.root),
        "broken": str(tmp_path / "broken"),
        "tmp": str(tmp_path),
    }
    wrong = []
    with Hypervisord(tmp_path / "hvd", allow=(tmp_path,)) as hvd, hvd.client() as http:
        for what, method, path, data, status, code in CASES:
            data = {k: v.format_map(places) for k, v in data.items()}
            r = http.get(path, params=data) if method == "GET" else http.post(path, json=data)
            body = r.json()
            got = (r.status_code, body.get("error", {}).get("code"))
            if got != (status, code) or "Traceback" in r.text or "\n" in str(body):
                wrong.append(f"{what}: {method} {path} {data} -> {got} {r.text}")

        # a conflict: a finished job cannot be cancelled
        r = http.post("/verifications", json={"output": str(repo.root), "vm": "web"})
        job = wait_job(http, r.json()["id"])
        assert job["state"] == "succeeded", job
        r = http.delete(f"/exports/{job['id']}")
        if (r.status_code, r.json()["error"]["code"]) != (409, "conflict"):
            wrong.append(f"conflict: {r.status_code} {r.text}")
    assert not wrong, "\n".join(wrong)
