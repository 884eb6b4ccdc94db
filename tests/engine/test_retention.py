"""Retention rules against an independent reference, and restic's worked examples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypersdk.engine.retention import Retention, apply, parse_duration, subtract
from hypersdk.errors import UsageError

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def reference(r: Retention, gens: list[tuple[str, datetime]]) -> dict[str, set[str]]:
    """Set-based, not sequential: per rule, group by period, take the newest of the N
    newest periods; a rule with fewer periods than N also keeps the oldest generation."""
    newest_first = sorted(gens, key=lambda g: (g[1], g[0]), reverse=True)
    keep: dict[str, set[str]] = {gid: set() for gid, _ in gens}
    for gid, _ in newest_first[: r.keep_last]:
        keep[gid].add("last")
    periods = {
        "hourly": lambda t: t.strftime("%Y-%m-%d %H"),
        "daily": lambda t: t.strftime("%Y-%m-%d"),
        "weekly": lambda t: t.strftime("%G-%V"),  # ISO year and week
        "monthly": lambda t: t.strftime("%Y-%m"),
        "yearly": lambda t: t.strftime("%Y"),
    }
    for name, period in periods.items():
        n = getattr(r, f"keep_{name}")
        if not n:
            continue
        first_of: dict[str, str] = {}
        for gid, t in newest_first:
            first_of.setdefault(period(t), gid)
        chosen = sorted(
            first_of.values(),
            key=lambda g: newest_first.index(next(x for x in newest_first if x[0] == g)),
        )[:n]
        for gid in chosen:
            keep[gid].add(name)
        if len(first_of) < n:
            keep[newest_first[-1][0]].add("oldest")
    if r.keep_within and newest_first:
        hours = parse_duration(r.keep_within)[2]
        for gid, t in newest_first:
            if newest_first[0][1] - t <= timedelta(hours=hours):
                keep[gid].add("within")
    return keep


times = st.lists(st.integers(0, 3 * 366 * 24 * 60), min_size=1, max_size=40, unique=True)
counts = st.integers(0, 6)


@settings(max_examples=300, deadline=None)
@given(
    minutes=times,
    last=counts, hourly=counts, daily=counts, weekly=counts, monthly=counts, yearly=counts,
    within=st.sampled_from(["", "12h", "3d", "2w", "1w2d5h"]),
)  # fmt: skip
def test_rules_match_the_reference(
    minutes: list[int], last: int, hourly: int, daily: int, weekly: int, monthly: int,
    yearly: int, within: str,
) -> None:  # fmt: skip
    r = Retention(last, hourly, daily, weekly, monthly, yearly, within)
    if r.empty:
        with pytest.raises(UsageError):
            apply(r, [])
        return
    gens = [(f"g{m:08d}", T0 + timedelta(minutes=m)) for m in minutes]
    got = {v.id: v.keep for v in apply(r, gens)}
    expected = reference(r, gens)
    assert got == {gid: bool(reasons) for gid, reasons in expected.items()}


def test_the_worked_example_of_the_docs() -> None:
    """docs/retention.md: a backup every evening at 22:00 UTC from Fri 2024-03-01 for 40
    days, pruned with --keep-daily 7 --keep-weekly 4 --keep-monthly 2."""
    start = datetime(2024, 3, 1, 22, tzinfo=UTC)
    gens = [(f"d{d:02d}", start + timedelta(days=d)) for d in range(40)]
    verdicts = apply(Retention(keep_daily=7, keep_weekly=4, keep_monthly=2), gens)
    kept = {v.id: v.reasons for v in verdicts if v.keep}
    assert kept == {
        "d39": ("daily", "weekly", "monthly"),  # Tue 04-09: newest of its day, week, month
        "d38": ("daily",),
        "d37": ("daily", "weekly"),  # Sun 04-07 ends ISO week 14
        "d36": ("daily",),
        "d35": ("daily",),
        "d34": ("daily",),
        "d33": ("daily",),  # Wed 04-03: the 7th newest day
        "d30": ("weekly", "monthly"),  # Sun 03-31: ends week 13 and March
        "d23": ("weekly",),  # Sun 03-24: the 4th newest week
    }
    assert [v.id for v in verdicts] == [f"d{d:02d}" for d in range(39, -1, -1)]


def test_keep_within_counts_from_the_newest_and_knows_months() -> None:
    newest = datetime(2024, 3, 31, 12, tzinfo=UTC)
    assert subtract(newest, "1m") == datetime(2024, 2, 29, 12, tzinfo=UTC)  # clamped
    assert subtract(newest, "1y1m1d") == datetime(2023, 2, 27, 12, tzinfo=UTC)
    gens = [
        ("new", newest),
        ("old", newest - timedelta(days=40)),
        ("mid", newest - timedelta(days=20)),
    ]
    kept = {v.id for v in apply(Retention(keep_within="1m"), gens) if v.keep}
    assert kept == {"new", "mid"}


def test_protected_generations_and_bad_input() -> None:
    gens = [("a", T0), ("b", T0 + timedelta(days=1))]
    verdicts = {v.id: v.reasons for v in apply(Retention(keep_last=1), gens, {"a": "pinned"})}
    assert verdicts == {"b": ("last",), "a": ("pinned",)}
    for bad in ("", "7", "d", "7x", "1d 2h", "-1d"):
        with pytest.raises(UsageError):
            parse_duration(bad)
    with pytest.raises(UsageError):
        Retention(keep_last=-1)
