"""Retention rules: which generations of one VM a policy keeps, and why.

The semantics are restic's ``forget --keep-*`` (docs/retention.md has a worked example):

- generations are taken newest first;
- ``keep_last N`` keeps the N newest;
- ``keep_hourly N`` (daily, weekly, monthly, yearly alike) keeps the newest generation
  of each of the N most recent hours (days, ISO weeks, months, years) that hold one;
  hours without a generation do not count;
- when there are too few generations to fill a calendar rule, the oldest generation is
  kept too ("oldest daily"), as restic 0.16 documents: the history reaches back as far as
  the rules asked for;
- ``keep_within D`` keeps every generation made within D of the *newest* generation
  (not of now: a VM that stopped being backed up keeps its last ones);
- a generation kept by several rules lists them all; one kept by none is removed.

Times are UTC, so a day is the same day on every machine of a fleet. Beyond restic, the
caller protects generations no rule may remove (the VM's latest; the parent of the next
incremental), see engine/prune.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta

from hypersdk.errors import UsageError

Bucket = Callable[[datetime], object]

# The calendar rules, in restic's order, with the bucket each one keeps one generation of.
CALENDAR: tuple[tuple[str, Bucket], ...] = (
    ("hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: t.isocalendar()[:2]),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: t.year),
)

_DURATION = re.compile(r"(\d+)([ymwdh])")
_UNIT_HOURS = {"h": 1, "d": 24, "w": 24 * 7}


@dataclass(frozen=True)
class Retention:
    """How many generations each rule keeps (0: the rule is off)."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: str = ""  # e.g. "1y2m3d4h" (years, months, weeks, days, hours)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "keep_within":
                if not isinstance(value, str):
                    raise UsageError("keep_within must be a duration such as 7d or 1y6m")
                if value:
                    parse_duration(value)
            elif type(value) is not int or value < 0:
                raise UsageError(f"{f.name} must be a whole number of 0 or more")

    @property
    def empty(self) -> bool:
        """No rule at all: restic refuses to forget anything then, and so do we."""
        return not any(getattr(self, f.name) for f in fields(self))

    def to_json(self) -> dict[str, int | str]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


def parse_duration(text: str) -> tuple[int, int, int]:
    """(years, months, hours) of a ``keep_within`` duration like ``1y6m2w3d12h``."""
    pos, years, months, hours = 0, 0, 0, 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        pos = m.end()
        n, unit = int(m.group(1)), m.group(2)
        if unit == "y":
            years += n
        elif unit == "m":
            months += n
        else:
            hours += n * _UNIT_HOURS[unit]
    if pos != len(text) or not text:
        raise UsageError(
            f"duration {text!r}: use numbers with y (years), m (months), w (weeks), "
            "d (days) or h (hours), e.g. 7d or 1y6m"
        )
    return years, months, hours


def subtract(t: datetime, duration: str) -> datetime:
    """``t`` minus a ``keep_within`` duration, calendar-aware for years and months (the
    day is clamped to the month's last, as restic's AddDate normalises)."""
    years, months, hours = parse_duration(duration)
    month_index = t.year * 12 + (t.month - 1) - years * 12 - months
    year, month = divmod(month_index, 12)
    day = min(t.day, _days_in_month(year, month + 1))
    return t.replace(year=year, month=month + 1, day=day) - timedelta(hours=hours)


def _days_in_month(year: int, month: int) -> int:
    following = datetime(year + month // 12, month % 12 + 1, 1)
    return (following - timedelta(days=1)).day


@dataclass(frozen=True)
class Verdict:
    """One generation and why it stays (empty ``reasons``: it is removed)."""

    id: str
    created: datetime
    reasons: tuple[str, ...]

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


def apply(
    retention: Retention,
    generations: Sequence[tuple[str, datetime]],
    protected: dict[str, str] | None = None,
) -> list[Verdict]:
    """A verdict for each ``(id, created)`` of one VM, newest first. ``protected`` maps
    ids to the reason they must stay whatever the rules say."""
    if retention.empty:
        raise UsageError("no retention rule given: nothing would be kept, so nothing is removed")
    ordered = sorted(generations, key=lambda g: (g[1], g[0]), reverse=True)
    counters = {name: getattr(retention, f"keep_{name}") for name, _ in CALENDAR}
    last_bucket: dict[str, object] = {}
    cutoff = (
        subtract(ordered[0][1], retention.keep_within)
        if ordered and retention.keep_within
        else None
    )
    out = []
    for i, (gen_id, created) in enumerate(ordered):
        reasons: list[str] = []
        if i < retention.keep_last:
            reasons.append("last")
        for name, bucket in CALENDAR:
            if counters[name] <= 0:
                continue
            value = bucket(created)
            if name not in last_bucket or last_bucket[name] != value:
                last_bucket[name] = value
                counters[name] -= 1
                reasons.append(name)
            elif i == len(ordered) - 1:
                reasons.append("oldest " + name)  # the rule is not filled: reach back
        if retention.keep_within and cutoff is not None and created >= cutoff:
            reasons.append("within " + retention.keep_within)
        if protected and gen_id in protected:
            reasons.append(protected[gen_id])
        out.append(Verdict(gen_id, created, tuple(reasons)))
    return out
