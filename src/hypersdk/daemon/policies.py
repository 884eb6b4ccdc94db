"""Backup policies: what a policy says, read from a policy file, the daemon's config or
the API, and checked once when it is read (docs/api.md, README "Backup policies").

A policy document (TOML table or YAML mapping; the API's JSON body is the same)::

    name = "nightly"                     # letters, digits, '.', '_', '-'
    vms = ["qcow2:/vms/web.qcow2",       # locators, or tables giving the placement
           "/DC0/vm/prod/*",             # vSphere glob (fnmatch: * crosses folders)
           {vm = "/DC0/vm/db", host = "esx1", datastore = "ds1"}]
    schedule = "0 2 * * *"               # cron, UTC; 6 fields: seconds first
    output = "/backups/repo"             # default: the daemon's repository
    retention = {keep_daily = 7, keep_weekly = 4}
    full_every_days = 30                 # optional: a forced full export every N days
    audit_every_days = 90                # optional: a --force-full --audit export
    max_concurrent = 2                   # exports of this policy at once (default 1)
    max_per_host = 1                     # optional: per ESXi host (QEMU: this host)
    max_per_datastore = 1                # optional: per datastore (qcow2: its filesystem)

Every mistake is a ``UsageError`` (422 at the API, exit 2 at start) that names the
policy and the field; an unknown key is a mistake too (a typo must not silently drop a
rule).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from croniter import croniter

from hypersdk.engine.retention import Retention
from hypersdk.errors import UsageError
from hypersdk.providers.factory import canonical_locator, is_qemu_locator

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_VMS = 1000
MAX_CONCURRENT = 64
MAX_DAYS = 36500.0
LOCAL_HOST = "localhost"  # the placement key of QEMU VMs: they run on the daemon's host

KEYS = frozenset(
    {
        "name",
        "vms",
        "schedule",
        "output",
        "retention",
        "full_every_days",
        "audit_every_days",
        "max_concurrent",
        "max_per_host",
        "max_per_datastore",
    }
)


@dataclass(frozen=True)
class PolicyVm:
    """One VM of a policy and where it runs, for the per-host and per-datastore limits."""

    vm_path: str  # as given: a qemu: locator's ?nbd= says how to reach the VM
    locator: str  # canonical: the VM's name in the policy's state
    host: str | None  # None: a vSphere VM's, looked up at run time
    datastore: str | None
    pattern: bool = False  # a vSphere glob, expanded at run time

    def to_json(self) -> dict[str, str | None]:
        return {"vm": self.vm_path, "host": self.host, "datastore": self.datastore}


@dataclass(frozen=True)
class Policy:
    name: str
    vms: tuple[PolicyVm, ...]
    schedule: str
    output: str  # resolved and allowed
    retention: Retention = field(default_factory=Retention)
    full_every_days: float | None = None
    audit_every_days: float | None = None
    max_concurrent: int = 1
    max_per_host: int | None = None
    max_per_datastore: int | None = None
    source: str = "file"  # "file" (policies file or daemon config) or "api"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "vms": [v.to_json() for v in self.vms],
            "schedule": self.schedule,
            "output": self.output,
            "retention": self.retention.to_json(),
            "full_every_days": self.full_every_days,
            "audit_every_days": self.audit_every_days,
            "max_concurrent": self.max_concurrent,
            "max_per_host": self.max_per_host,
            "max_per_datastore": self.max_per_datastore,
            "source": self.source,
        }

    def document(self) -> dict[str, Any]:
        """The policy as a document ``parse_policy`` reads back (what the API stores)."""
        doc = self.to_json()
        del doc["source"]
        return {k: v for k, v in doc.items() if v is not None}


def cron(schedule: str, start: datetime) -> croniter:
    """A croniter for ``schedule`` from ``start``: 5 fields, or 6 with seconds first
    (Quartz's order, which tests use to compress time)."""
    return croniter(schedule, start, second_at_beginning=len(schedule.split()) == 6)


def check_schedule(schedule: object, where: str) -> str:
    if not isinstance(schedule, str) or not schedule.strip():
        raise UsageError(f"{where}: schedule must be a cron expression such as '0 2 * * *'")
    text = " ".join(schedule.split())
    n = len(text.split())
    ok = n in (5, 6) and croniter.is_valid(text, second_at_beginning=n == 6)
    if not ok:
        raise UsageError(
            f"{where}: schedule {schedule!r} is not a cron expression: give 5 fields "
            "(minute hour day month weekday) or 6 with seconds first"
        )
    return text


def _where(name: object) -> str:
    return f"policy {name}" if isinstance(name, str) and name else "policy"


def _count(doc: Mapping[str, Any], key: str, where: str, default: int | None) -> int | None:
    value = doc.get(key)
    if value is None:
        return default
    if type(value) is not int or not 1 <= value <= MAX_CONCURRENT:
        raise UsageError(f"{where}: {key} must be a whole number from 1 to {MAX_CONCURRENT}")
    return value


def _days(doc: Mapping[str, Any], key: str, where: str) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 < value <= MAX_DAYS
    )
    if not ok:
        raise UsageError(f"{where}: {key} must be a number of days more than 0")
    return float(value)


def _retention(value: object, where: str) -> Retention:
    if value is None:
        return Retention()
    if not isinstance(value, Mapping):
        raise UsageError(f"{where}: retention must be a table such as {{keep_daily = 7}}")
    known = {f.name for f in fields(Retention)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise UsageError(
            f"{where}: unknown retention rule {unknown[0]!r} (use {', '.join(sorted(known))})"
        )
    try:
        return Retention(**dict(value))
    except UsageError as err:
        raise UsageError(f"{where}: retention: {err}") from None


def default_datastore(locator: str) -> str:
    """The datastore key of a QEMU VM: a qcow2 image's filesystem (exports of images on
    one disk compete for it), else this host."""
    if locator.startswith("qcow2:"):
        folder = os.path.dirname(locator.removeprefix("qcow2:"))
        try:
            return f"{LOCAL_HOST}:dev{os.stat(folder).st_dev}"
        except OSError:
            return f"{LOCAL_HOST}:{folder}"
    return LOCAL_HOST


def _vm(entry: object, where: str) -> PolicyVm:
    host = datastore = None
    if isinstance(entry, Mapping):
        unknown = sorted(set(entry) - {"vm", "host", "datastore"})
        if unknown:
            raise UsageError(f"{where}: unknown key {unknown[0]!r} in a VM entry")
        host, datastore, entry = entry.get("host"), entry.get("datastore"), entry.get("vm")
        for key, v in (("host", host), ("datastore", datastore)):
            if v is not None and (not isinstance(v, str) or not v or "\x00" in v):
                raise UsageError(f"{where}: a VM's {key} must be a non-empty string")
    if not isinstance(entry, str) or not entry.strip() or "\x00" in entry:
        raise UsageError(f"{where}: each VM must be a locator (qemu:, qcow2: or a vSphere path)")
    try:
        locator = canonical_locator(entry)
    except UsageError as err:
        raise UsageError(f"{where}: {err}") from None
    if is_qemu_locator(locator):
        host = host or LOCAL_HOST
        datastore = datastore or default_datastore(locator)
        return PolicyVm(entry.strip(), locator, host, datastore)
    # vSphere: where the VM runs is looked up at run time unless given here; a path
    # with a glob character names every VM it matches then.
    return PolicyVm(entry.strip(), locator, host, datastore, pattern=is_glob(locator))


def is_glob(locator: str) -> bool:
    return any(c in locator for c in "*?[")


def parse_policy(
    doc: object,
    resolve_output: Callable[[str | None], str],
    *,
    name: str | None = None,
    source: str = "file",
) -> Policy:
    """Check one policy document. ``resolve_output`` turns the ``output`` given (or None)
    into the allowed repository path (ForbiddenPath / UsageError otherwise). ``name``,
    when given (the API's path), is the policy's name; a different one in ``doc`` is an
    error."""
    if not isinstance(doc, Mapping):
        raise UsageError("a policy must be a table (TOML) or a mapping (YAML, JSON)")
    given = doc.get("name")
    if name is not None and given is not None and given != name:
        raise UsageError(f"policy {name}: the body names another policy ({given!r})")
    the_name = name if name is not None else given
    if not isinstance(the_name, str) or not NAME.match(the_name):
        raise UsageError(
            f"{_where(the_name)}: name must be 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    where = _where(the_name)
    unknown = sorted(set(doc) - KEYS)
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r} (use {', '.join(sorted(KEYS))})")
    vms = doc.get("vms")
    if isinstance(vms, str) or not isinstance(vms, Sequence) or not vms:
        raise UsageError(f"{where}: vms must be a non-empty list of VM locators")
    if len(vms) > MAX_VMS:
        raise UsageError(f"{where}: vms may list at most {MAX_VMS} VMs")
    parsed = [_vm(v, where) for v in vms]
    seen: set[str] = set()
    for v in parsed:
        if v.locator in seen:
            raise UsageError(f"{where}: VM {v.locator} is listed twice")
        seen.add(v.locator)
    schedule = check_schedule(doc.get("schedule"), where)
    output = doc.get("output")
    if output is not None and (not isinstance(output, str) or not output.startswith("/")):
        raise UsageError(f"{where}: output must be an absolute path")
    try:
        resolved = resolve_output(output)
    except UsageError as err:  # ForbiddenPath keeps its class (403 at the API)
        raise type(err)(f"{where}: {err}") from None
    return Policy(
        name=the_name,
        vms=tuple(parsed),
        schedule=schedule,
        output=resolved,
        retention=_retention(doc.get("retention"), where),
        full_every_days=_days(doc, "full_every_days", where),
        audit_every_days=_days(doc, "audit_every_days", where),
        max_concurrent=_count(doc, "max_concurrent", where, 1) or 1,
        max_per_host=_count(doc, "max_per_host", where, None),
        max_per_datastore=_count(doc, "max_per_datastore", where, None),
        source=source,
    )


def read_policy_file(path: str | os.PathLike[str]) -> list[Any]:
    """The policy documents of a file: TOML (``[[policies]]``) when it ends in ``.toml``,
    else YAML (a ``policies:`` list)."""
    p = Path(path)
    try:
        if p.suffix == ".toml":
            with open(p, "rb") as f:
                doc: Any = tomllib.load(f)
        else:
            with open(p, encoding="utf-8") as f:
                doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise UsageError(f"policies file {p} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read policies file {p}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"policies file {p}: {first}") from exc
    if doc is None:
        return []
    if not isinstance(doc, Mapping) or not isinstance(doc.get("policies", []), list):
        raise UsageError(f"policies file {p}: expected a 'policies' list of policies")
    unknown = sorted(set(doc) - {"policies"})
    if unknown:
        raise UsageError(f"policies file {p}: unknown key {unknown[0]!r} (only 'policies')")
    return list(doc.get("policies", []))


def parse_policies(
    docs: Sequence[object], resolve_output: Callable[[str | None], str], source: str = "file"
) -> list[Policy]:
    policies = [parse_policy(d, resolve_output, source=source) for d in docs]
    names: set[str] = set()
    for p in policies:
        if p.name in names:
            raise UsageError(f"policy {p.name} is defined twice")
        names.add(p.name)
    return policies
