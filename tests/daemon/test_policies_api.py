"""The /policies routes: create, replace and delete through the API (kept across a
restart), run now, names that do not exist, and mistakes answered 422 (403 for a folder
the daemon may not touch) with a message naming the policy and the field. A policies
file with a mistake stops the daemon with one line."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.daemon.live import Hypervisord, wait_job
from tests.rigs.qsd import MiB, QemuStorageDaemon

YEARLY = "0 0 1 1 *"  # never due during a test


def body(vm: str, **fields: Any) -> dict[str, Any]:
    return {"vms": [vm], "schedule": YEARLY, **fields}


MISTAKES: list[tuple[dict[str, Any], int, str]] = [
    ({"schedule": "every day"}, 422, "policy p: schedule 'every day' is not a cron"),
    ({"schedule": "61 * * * *"}, 422, "is not a cron expression"),
    ({"retention": {"keep_dayly": 3}}, 422, "retention.keep_dayly: Extra inputs"),
    ({"retention": {"keep_within": "3 days"}}, 422, "policy p: retention: duration"),
    ({"max_concurrent": 0}, 422, "max_concurrent: Input should be greater than"),
    ({"schedul": "* * * * *"}, 422, "schedul: Extra inputs are not permitted"),
    ({"vms": []}, 422, "vms: List should have at least 1 item"),
    ({"vms": ["qcow2:/a.qcow2", "qcow2:/b/../a.qcow2"]}, 422, "is listed twice"),
    ({"name": "other"}, 422, "the body names another policy"),
    ({"output": "/etc"}, 403, "policy p: "),
]


def test_policy_mistakes(hvd: Hypervisord) -> None:
    http = hvd.client()
    for fields, status, message in MISTAKES:
        answer = http.put("/policies/p", json=body("qcow2:/vms/a.qcow2", **fields))
        assert answer.status_code == status, (fields, answer.text)
        error = answer.json()["error"]
        assert message in error["message"], (fields, error)
    assert http.get("/policies").json() == {"policies": []}


def test_create_run_replace_delete(tmp_path: Path, qsd: QemuStorageDaemon) -> None:
    qsd.write(0, b"\x61" * MiB)
    hvd = Hypervisord(tmp_path / "hvd", output=tmp_path / "repo", allow=(tmp_path,))
    with hvd:
        http = hvd.client()
        made = http.put("/policies/weekly", json=body(qsd.locator, max_per_host=1))
        assert made.status_code == 200, made.text
        policy = made.json()
        assert policy["source"] == "api" and policy["running"] is None
        assert policy["vms"] == [{"vm": qsd.locator, "host": "localhost", "datastore": "localhost"}]
        assert policy["output"] == str(tmp_path / "repo")

        started = http.post("/policies/weekly/run")
        assert started.status_code == 202, started.text
        run = started.json()
        assert run["trigger"] == "manual" and run["scheduled"] is None
        job_id = run["exports"][0]["job_id"]
        assert job_id is not None  # the answer carries the export job
        again = http.post("/policies/weekly/run")
        if again.status_code == 409:  # the first run was still going
            assert "still running" in again.json()["error"]["message"]
        assert wait_job(http, job_id)["state"] == "succeeded"

        replaced = http.put("/policies/weekly", json=body(qsd.locator, schedule="0 3 * * 0"))
        assert replaced.json()["schedule"] == "0 3 * * 0"
    with hvd:  # kept across a restart
        http = hvd.client()
        assert http.get("/policies/weekly").json()["schedule"] == "0 3 * * 0"
        deadline = time.monotonic() + 10
        while any(
            r["state"] == "running" for r in http.get("/policies/weekly/history").json()["runs"]
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        history = http.get("/policies/weekly/history").json()["runs"]
        assert history[-1]["id"] == run["id"] and history[-1]["state"] == "succeeded"
        assert http.delete("/policies/weekly").status_code == 200
        for method, path in (
            ("GET", "/policies/weekly"),
            ("POST", "/policies/weekly/run"),
            ("GET", "/policies/weekly/history"),
            ("DELETE", "/policies/weekly"),
        ):
            answer = http.request(method, path)
            assert answer.status_code == 404, (method, path)
            assert answer.json()["error"]["message"] == "no policy 'weekly'"


def test_file_policies_cannot_be_changed_through_the_api(tmp_path: Path) -> None:
    policies = tmp_path / "policies.yaml"
    policies.write_text(
        "policies:\n"
        f'  - {{name: nightly, vms: ["qcow2:{tmp_path}/a.qcow2"], schedule: "{YEARLY}"}}\n'
    )
    with Hypervisord(
        tmp_path / "hvd",
        output=tmp_path / "repo",
        allow=(tmp_path,),
        args=("--policies", str(policies)),
    ) as hvd:
        http = hvd.client()
        answer = http.put("/policies/nightly", json=body(f"qcow2:{tmp_path}/a.qcow2"))
        assert answer.status_code == 409
        assert "defined in the daemon's policies file" in answer.json()["error"]["message"]
        assert http.delete("/policies/nightly").status_code == 409
        # A run whose VM is missing fails with the reason, and is recorded.
        run = http.post("/policies/nightly/run").json()
        assert run["exports"][0]["state"] == "failed"
        assert "does not exist" in run["exports"][0]["error"]


def test_a_policies_file_mistake_stops_the_daemon(tmp_path: Path) -> None:
    policies = tmp_path / "policies.toml"
    policies.write_text('[[policies]]\nname = "x"\nvms = ["qcow2:/a.qcow2"]\nschedule = "* *"\n')
    done = subprocess.run(
        [sys.executable, "-m", "hypersdk.daemon.main", "--state-dir", str(tmp_path / "s"),
         "--output", str(tmp_path / "repo"), "--policies", str(policies), "--port", "1"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "hypervisord: error: policy x: schedule '* *' is not a cron expression: give 5 "
        "fields (minute hour day month weekday) or 6 with seconds first"
    ]
