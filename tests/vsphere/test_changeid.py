"""The vSphere change-id rules, in one function used by check_change_id (the decision)
and by the backup session (the last guard): every branch, without a lab."""

from __future__ import annotations

import pytest

from hypersdk.providers.vsphere import _changeid

U1 = "52 de c0 d9 98 ae 2e da-b7 85 77 f2 70 2c 79 a7"
U2 = "52 11 22 33 44 55 66 77-88 99 aa bb cc dd ee ff"

# (previous, current, tracking, valid, reason starts with)
CASES = [
    (f"{U1}/5", f"{U1}/5", True, True, ""),
    (f"{U1}/5", f"{U1}/9", True, True, ""),
    (f"{U1}/5", None, True, False, "Disk disk-2000 is no longer part of the VM"),
    ("", f"{U1}/5", True, False, "Disk disk-2000 has no previous change id"),
    (f"{U1}/5", f"{U1}/5", False, False, "CBT is off on disk-2000: a new baseline is needed"),
    (f"{U1}/5", "", True, False, "CBT is off on disk-2000"),
    ("52 de c0", f"{U1}/5", True, False, "The previous change id of disk-2000 is malformed"),
    (f"{U1}/x", f"{U1}/5", True, False, "The previous change id of disk-2000 is malformed"),
    ("/5", f"{U1}/5", True, False, "The previous change id of disk-2000 is malformed"),
    (f"{U1}/-1", f"{U1}/5", True, False, "The previous change id of disk-2000 is malformed"),
    (f"{U1}/5", "garbage", True, False, "The change id of disk-2000 is malformed: garbage"),
    (f"{U1}/5", f"{U2}/7", True, False, "CBT was reset on disk-2000 (change id uuid differs): "),
    (f"{U1}/9", f"{U1}/5", True, False, "The previous change id of disk-2000 is newer"),
]


@pytest.mark.parametrize(("previous", "current", "tracking", "valid", "reason"), CASES)
def test_change_id_rules(
    previous: str, current: str | None, tracking: bool, valid: bool, reason: str
) -> None:
    verdict = _changeid.check("disk-2000", previous, current, tracking=tracking)
    assert verdict.valid is valid
    assert verdict.reason.startswith(reason) and (valid or reason), verdict.reason
    assert "\n" not in verdict.reason


def test_parse() -> None:
    assert _changeid.parse(f"{U1}/12") == _changeid.ChangeId(U1, 12)
    assert _changeid.parse(f" {U1} /12") == _changeid.ChangeId(U1, 12)
    for bad in ("", "/", f"{U1}", f"{U1}/", f"{U1}/1.5", "/3"):
        assert _changeid.parse(bad) is None, bad
