"""The dashboard (/ui/) in Debian's chromium, headless, driven by Selenium through
chromium-driver, against a live hypervisord with a qemu-storage-daemon VM and a qcow2 VM.

Screenshots of every page land in the folder the module prints (HYPERSDK_UI_ARTIFACTS,
else a pytest temp folder); docs/dashboard.png is one of them."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from hypersdk.daemon.routes_ui import UI_DIR
from tests.daemon.live import Hypervisord, wait_job
from tests.rigs.qsd import MiB, QemuStorageDaemon, create_qcow2

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None or DRIVER is None,
        reason="needs Debian's chromium and chromium-driver (make setup)",
    ),
    pytest.mark.skipif(
        not (UI_DIR / "app.js").is_file(), reason="the dashboard is not built (make setup)"
    ),
]
WAIT = 20.0


@dataclass
class Lab:
    hvd: Hypervisord
    http: httpx.Client
    qsd: QemuStorageDaemon
    qsd_vm: str  # its id in the repository
    qcow2: str  # locator
    qcow2_vm: str
    never: str  # a policy's VM never exported
    folder: Path
    shots: Path


def _export(http: httpx.Client, vm_path: str, **extra: Any) -> dict[str, Any]:
    r = http.post("/exports", json={"vm_path": vm_path, **extra})
    assert r.status_code == 202, r.text
    job = wait_job(http, r.json()["id"])
    assert job["state"] == "succeeded", job
    return job


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    folder = tmp_path_factory.mktemp("ui")
    shots = Path(os.environ.get("HYPERSDK_UI_ARTIFACTS") or folder / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    print(f"\ndashboard screenshots: {shots}")
    rng = random.Random(17)
    image = folder / "web.qcow2"
    create_qcow2(image, 16 * MiB)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 3M", str(image)],
        check=True,
        capture_output=True,
    )
    with (
        QemuStorageDaemon(folder / "qsd", size=32 * MiB) as qsd,
        Hypervisord(
            folder / "hvd",
            output=folder / "repo",
            allow=(folder,),
            args=("--max-concurrent-exports", "1"),  # a second export waits in the queue
        ) as hvd,
        hvd.client() as http,
    ):
        qsd.write(0, rng.randbytes(4 * MiB))
        assert http.post("/cbt/enable", json={"vm_path": qsd.locator}).status_code == 200
        qsd_vm = _export(http, qsd.locator)["result"]["vm"]
        qcow2 = f"qcow2:{image}"
        qcow2_vm = _export(http, qcow2)["result"]["vm"]
        never = folder / "never.qcow2"  # in a policy, never exported: stale
        create_qcow2(never, MiB)
        policy = {"vms": [qcow2, f"qcow2:{never}"], "schedule": "0 3 1 1 *"}
        r = http.put("/policies/nightly", json=policy)
        assert r.status_code == 200, r.text
        # A policy with its own repository: its VMs show too, with that repository.
        offsite = folder / "offsite"
        _export(http, qcow2, output=str(offsite))
        r = http.put(
            "/policies/offsite",
            json={"vms": [qcow2], "schedule": "0 4 1 1 *", "output": str(offsite)},
        )
        assert r.status_code == 200, r.text
        yield Lab(hvd, http, qsd, qsd_vm, qcow2, qcow2_vm, f"qcow2:{never}", folder, shots)


@pytest.fixture(scope="module")
def browser(lab: Lab) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
        f"--user-data-dir={lab.folder / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(
        executable_path=DRIVER, log_output=str(lab.folder / "driver.log")
    )
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(check: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def wait(driver: Any, check: Callable[[Any], Any], what: str) -> Any:
    try:
        # A page that re-renders replaces its nodes: look again.
        ignored = (NoSuchElementException, StaleElementReferenceException)
        return WebDriverWait(driver, WAIT, 0.05, ignored_exceptions=ignored).until(check)
    except TimeoutException:
        alert = driver.find_element(By.ID, "alert").text
        raise AssertionError(f"timed out waiting for {what}; alert: {alert!r}") from None


def loaded(driver: Any, page: str) -> None:
    wait(
        driver,
        lambda d: d.find_element(By.ID, "view").get_attribute("data-loaded") == page,
        f"page {page}",
    )


def go(driver: Any, lab: Lab, fragment: str, page: str) -> None:
    driver.execute_script("document.getElementById('view').removeAttribute('data-loaded')")
    url = f"{lab.hvd.base_url}/ui/{fragment}"
    if driver.current_url == url:
        driver.refresh()  # the same fragment again is no navigation
    else:
        driver.get(url)
    loaded(driver, page)


def shot(driver: Any, lab: Lab, name: str) -> None:
    """The whole page, as tall as its content, at 1280 CSS pixels wide."""
    height = int(driver.execute_script("return document.body.scrollHeight"))
    metrics = {"width": 1280, "height": max(600, min(height + 16, 3000))}
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {**metrics, "deviceScaleFactor": 1, "mobile": False}
    )
    try:
        driver.save_screenshot(str(lab.shots / f"{name}.png"))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


# ---------------------------------------------------------------- plain HTTP


def test_static_files_need_no_token_and_carry_a_strict_policy(lab: Lab) -> None:
    with httpx.Client(base_url=lab.hvd.base_url) as anon:
        page = anon.get("/ui/")
        assert page.status_code == 200 and "<main" in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        js = anon.get("/ui/app.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert anon.get("/ui", follow_redirects=False).headers["location"] == "/ui/"
        missing = anon.get("/ui/app.ts")  # only the page's own files
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        # The open prefix reaches no API route: the whole path is matched.
        for path in ("/ui/../exports", "/ui/%2e%2e/exports", "/ui//exports"):
            assert anon.get(path).status_code in (401, 404), path
        assert anon.get("/ui/../exports").status_code != 200
        assert anon.get("/repository").status_code == 401
        assert anon.get("/exports").json()["error"]["message"] == "missing API token"


def test_sign_in_link_is_printed_with_the_token(lab: Lab) -> None:
    assert f"{lab.hvd.base_url}/ui/#token={lab.hvd.token}" in lab.hvd.log()


def test_repository_stats(lab: Lab) -> None:
    st = lab.http.get("/repository").json()
    assert st["output"] == str(lab.folder / "repo")
    assert st["vms"] == 2 and st["generations"] >= 2
    assert st["chunk_count"] > 0 and st["stored_bytes"] > 0
    # 32 MiB + 16 MiB of disks; 7 MiB of data written: the rest is zeros, never stored.
    assert st["logical_bytes"] >= 48 * MiB
    assert st["dedup_ratio"] == round(st["logical_bytes"] / st["stored_bytes"], 3)
    assert lab.http.get("/repository", params={"output": "/etc"}).status_code == 403


# -------------------------------------------------------------------- browser


def test_refused_without_the_token_shows_the_api_message(browser: Any, lab: Lab) -> None:
    browser.get(f"{lab.hvd.base_url}/ui/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{lab.hvd.base_url}/ui/#/")
    field = wait(browser, lambda d: d.find_element(By.ID, "token"), "the sign-in form")
    shot(browser, lab, "sign-in")
    field.send_keys("not-the-token", Keys.ENTER)
    loaded(browser, "error")
    assert browser.find_element(By.ID, "page-error").text == "wrong API token"
    assert "wrong API token" in browser.find_element(By.ID, "alert").text


def test_sign_in_link_then_overview_lists_both_vms(browser: Any, lab: Lab) -> None:
    browser.get(f"{lab.hvd.base_url}/ui/")
    browser.execute_script("sessionStorage.clear()")
    go(browser, lab, f"#token={lab.hvd.token}", "overview")
    # The token left the address bar for session storage.
    assert "token" not in browser.current_url
    assert browser.execute_script("return sessionStorage.getItem('hypervisord-token')") == (
        lab.hvd.token
    )
    found = browser.find_elements(By.CSS_SELECTOR, "#vms tbody tr")
    rows = {r.get_attribute("data-vm"): r.text for r in found if "offsite" not in r.text}
    offsite = [r for r in found if "offsite" in r.text]
    # The qcow2 VM once more: held by the offsite policy's repository.
    assert [r.get_attribute("data-vm") for r in offsite] == [lab.qcow2_vm]
    link = offsite[0].find_element(By.TAG_NAME, "a").get_attribute("href")
    assert link.endswith(f"?output={quote(str(lab.folder / 'offsite'), safe='')}"), link
    assert set(rows) >= {lab.qsd_vm, lab.qcow2_vm}, rows
    assert "nightly" in rows[lab.qcow2_vm]  # its policy
    assert "fresh" in rows[lab.qsd_vm] and "full" in rows[lab.qsd_vm]
    # Stale in words and a mark, not by colour alone.
    assert "stale" in rows[lab.never] and "none" in rows[lab.never]
    stale = browser.find_element(By.CSS_SELECTOR, f"tr[data-vm='{lab.never}']")
    assert "stale-row" in stale.get_attribute("class")
    # Every row's CBT state, the VM in two repositories too: words, not a colour.
    wait(
        browser,
        lambda d: all(
            ("enabled" in r.text) != ("disabled" in r.text)
            for r in d.find_elements(By.CSS_SELECTOR, "#vms tbody tr")
        ),
        "the CBT states",
    )
    assert "enabled" in browser.find_element(By.CSS_SELECTOR, f"tr[data-vm='{lab.qsd_vm}']").text
    shot(browser, lab, "overview")


def test_overview_follows_running_jobs_live(browser: Any, lab: Lab) -> None:
    """One export slot: an export of a VM whose QMP socket never answers holds it, so a
    real export waits queued; the overview shows both, then follows them over the event
    stream to their ends once the silent socket goes away."""
    silent = lab.folder / "silent"
    silent.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(silent / "qmp.sock"))
    listener.listen(4)
    try:
        r = lab.http.post("/exports", json={"vm_path": f"qemu:{silent / 'qmp.sock'}"})
        assert r.status_code == 202, r.text
        stuck = r.json()["id"]
        wait_until(lambda: lab.http.get(f"/exports/{stuck}").json()["state"] == "running")
        r = lab.http.post("/exports", json={"vm_path": lab.qsd.locator, "force_full": True})
        assert r.status_code == 202, r.text
        queued = r.json()["id"]
        go(browser, lab, "#/", "overview")
        box = browser.find_element(By.CSS_SELECTOR, f".job-progress[data-job='{queued}']")
        assert box.get_attribute("data-state") == "queued"
        assert "running" in browser.find_element(
            By.CSS_SELECTOR, f".job-progress[data-job='{stuck}']"
        ).get_attribute("data-state")
        shot(browser, lab, "overview-running")
    finally:
        listener.close()  # the stuck export's QMP connection is reset: it fails
    wait(
        browser,
        lambda d: (
            d.find_element(By.CSS_SELECTOR, f".job-progress[data-job='{queued}']").get_attribute(
                "data-state"
            )
            == "succeeded"
        ),
        "the queued export to run and finish",
    )
    done = browser.find_element(By.CSS_SELECTOR, f".job-progress[data-job='{queued}']").text
    assert "done 100%" in done, done
    failed = browser.find_element(By.CSS_SELECTOR, f".job-progress[data-job='{stuck}']")
    assert failed.get_attribute("data-state") == "failed"
    error = lab.http.get(f"/exports/{stuck}").json()["error"]["message"]
    assert error in failed.text  # the API's own message


def test_export_from_the_vm_page_reaches_done_and_shows_in_timeline_and_chart(
    browser: Any, lab: Lab
) -> None:
    go(browser, lab, f"#/vm/{lab.qsd_vm}", "vm")
    before = len(browser.find_elements(By.CSS_SELECTOR, "#timeline li"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#chart .bar-group")) == before
    lab.qsd.write(8 * MiB, random.Random(5).randbytes(2 * MiB))
    button = browser.find_element(By.ID, "export-incremental")
    button.send_keys(Keys.ENTER)  # the keyboard works as well as a click
    progress = wait(
        browser, lambda d: d.find_element(By.CSS_SELECTOR, "#vm-jobs .job-progress"), "progress"
    )
    job_id = progress.get_attribute("data-job")
    seen = wait(
        browser,
        lambda d: (
            d.find_element(By.CSS_SELECTOR, f".job-progress[data-job='{job_id}']").get_attribute(
                "data-state"
            )
            in ("succeeded", "failed")
        ),
        "the export to finish",
    )
    assert seen
    # The page reloads its VM once the export succeeded: a new generation.
    wait(
        browser,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#timeline li")) == before + 1,
        "the new generation in the timeline",
    )
    job = lab.http.get(f"/exports/{job_id}").json()
    assert job["state"] == "succeeded" and job["mode"] == "incremental", job
    newest = browser.find_element(By.CSS_SELECTOR, "#timeline li")
    assert newest.get_attribute("data-generation") == job["result"]["generation"]
    assert "incremental" in newest.text
    bars = browser.find_elements(By.CSS_SELECTOR, "#chart .bar-group")
    assert len(bars) == before + 1
    assert bars[-1].get_attribute("data-generation") == job["result"]["generation"]
    assert "incremental" in bars[-1].get_attribute("class")
    assert "full" in bars[0].get_attribute("class")
    assert "incremental" in browser.find_element(By.ID, "decision").text
    shot(browser, lab, "vm")


def test_instant_access_session_starts_and_stops(browser: Any, lab: Lab) -> None:
    go(browser, lab, f"#/vm/{lab.qcow2_vm}", "vm")
    browser.find_element(By.ID, "start-session").click()
    uri = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#session .nbd-uri"), "the URI")
    assert uri.text.startswith("nbd+unix:///")
    sessions = lab.http.get("/serve-sessions").json()["sessions"]
    assert [s["uri"] for s in sessions] == [uri.text]
    # A real NBD client reads the disk the page names.
    info = subprocess.run(["nbdinfo", "--size", uri.text], capture_output=True, text=True)
    assert info.returncode == 0 and int(info.stdout) == 16 * MiB, info.stderr
    shot(browser, lab, "vm-instant-access")
    browser.find_element(By.CSS_SELECTOR, "#session .stop-session").click()
    wait(browser, lambda d: d.find_element(By.ID, "no-session"), "the session to stop")
    assert lab.http.get("/serve-sessions").json()["sessions"] == []


def test_jobs_page_filters_and_job_page(browser: Any, lab: Lab) -> None:
    go(browser, lab, "#/jobs?state=succeeded&kind=export", "jobs")
    rows = browser.find_elements(By.CSS_SELECTOR, "table tbody tr")
    assert len(rows) >= 3 and all("succeeded" in r.text for r in rows)
    shot(browser, lab, "jobs")
    rows[0].find_element(By.TAG_NAME, "a").click()
    loaded(browser, "job")
    assert "succeeded" in browser.find_element(By.ID, "job-detail").text
    shot(browser, lab, "job")
    failed = lab.http.get("/exports", params={"state": "failed"}).json()["jobs"]
    assert failed  # the export of the silent QMP socket
    go(browser, lab, f"#/job/{failed[0]['id']}", "job")
    error = failed[0]["error"]
    assert browser.find_element(By.ID, "job-error").text == f"{error['code']}: {error['message']}"
    shot(browser, lab, "job-failed")


def test_verify_and_restore_from_the_vm_page(browser: Any, lab: Lab) -> None:
    go(browser, lab, f"#/vm/{lab.qcow2_vm}", "vm")
    browser.find_element(By.ID, "verify").click()
    target = lab.folder / "restored.raw"
    browser.find_element(By.ID, "restore-to").send_keys(str(target), Keys.ENTER)

    def states(d: Any) -> list[str]:
        boxes = d.find_elements(By.CSS_SELECTOR, "#vm-jobs .job-progress")
        return sorted(b.get_attribute("data-state") for b in boxes)

    wait(browser, lambda d: states(d) == ["succeeded", "succeeded"], "verify and restore")
    kinds = {j["kind"]: j for j in lab.http.get("/exports", params={"limit": 2}).json()["jobs"]}
    assert kinds["verify"]["result"]["ok"] is True
    assert kinds["restore"]["result"]["generation"]
    assert target.stat().st_size == 16 * MiB
    with open(target, "rb") as f:
        assert f.read(3 * MiB) == b"\x5a" * (3 * MiB)


def test_every_action_is_reachable_with_the_keyboard(browser: Any, lab: Lab) -> None:
    go(browser, lab, f"#/vm/{lab.qcow2_vm}", "vm")
    body = browser.find_element(By.TAG_NAME, "body")
    body.click()
    reached: list[str] = []
    for _ in range(40):
        browser.switch_to.active_element.send_keys(Keys.TAB)
        el = browser.switch_to.active_element
        reached.append(el.get_attribute("id") or el.text)
    for wanted in (
        "Overview", "Jobs", "Repository", "sign-out", "export-incremental", "export-full",
        "verify", "restore-generation", "restore-to", "restore", "start-session",
    ):  # fmt: skip
        assert wanted in reached, (wanted, reached)


def test_a_refused_restore_shows_the_api_message(browser: Any, lab: Lab) -> None:
    target = lab.folder / "taken.raw"
    target.write_bytes(b"keep me")
    go(browser, lab, f"#/vm/{lab.qcow2_vm}", "vm")
    browser.find_element(By.ID, "restore-to").send_keys(str(target), Keys.ENTER)
    shown = wait(browser, lambda d: d.find_element(By.ID, "alert").text, "the refusal")
    expected = lab.http.post("/restores", json={"vm": lab.qcow2_vm, "to": str(target)})
    assert expected.status_code == 422, expected.text
    assert shown == f"Error: {expected.json()['error']['message']}"
    assert target.read_bytes() == b"keep me"


def test_repository_page(browser: Any, lab: Lab) -> None:
    go(browser, lab, "#/repository", "repository")
    st = lab.http.get("/repository").json()
    assert browser.find_element(By.ID, "repo-chunks").text.replace(",", "") == str(
        st["chunk_count"]
    )
    assert browser.find_element(By.ID, "repo-size").text.endswith(("KiB", "MiB"))
    browser.find_element(By.ID, "verify-all").click()
    wait(
        browser,
        lambda d: "succeeded" in d.find_element(By.ID, "repo-last-verify").text,
        "the verification to finish and show",
    )
    assert browser.find_element(By.ID, "repo-last-gc").text.startswith("never")
    browser.find_element(By.ID, "gc").click()
    wait(
        browser,
        lambda d: "succeeded" in d.find_element(By.ID, "repo-last-gc").text,
        "the gc to finish and show",
    )
    assert "freed" in browser.find_element(By.ID, "repo-last-gc").text
    shot(browser, lab, "repository")


def test_no_policy_violation_or_script_error_on_any_page(browser: Any, lab: Lab) -> None:
    """The CSP is self only: nothing the page does may be refused by it, and no page may
    throw. (The API's refusals that earlier tests provoked, 401 and 422, are logged as
    failed loads: those are answers, not errors of the page.)"""
    for fragment, page in (("#/", "overview"), (f"#/vm/{lab.qsd_vm}", "vm"), ("#/jobs", "jobs")):
        go(browser, lab, fragment, page)
    logs = browser.get_log("browser")
    bad = [
        e["message"]
        for e in logs
        if e["level"] == "SEVERE" and "the server responded with a status of 4" not in e["message"]
    ]
    assert bad == [], bad
    assert not [e for e in logs if "Content Security Policy" in e["message"]]


def test_a_policy_repository_from_the_overview(browser: Any, lab: Lab) -> None:
    go(browser, lab, "#/", "overview")
    offsite = lab.folder / "offsite"
    browser.find_element(By.CSS_SELECTOR, f"#vms a[title='{offsite}']").click()
    loaded(browser, "repository")
    stats = browser.find_element(By.ID, "repo-stats").text
    assert str(offsite) in stats
    assert browser.find_element(By.ID, "repo-chunks").text == str(
        lab.http.get("/repository", params={"output": str(offsite)}).json()["chunk_count"]
    )
