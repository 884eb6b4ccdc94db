"""hyperexport --vms FILE: many VMs in one command, a few at a time.

Each VM is exported as ``hyperexport --vm`` would (its own provider, its own history),
in a thread pool of ``--concurrency`` workers. One progress display for all, one summary
table (or one JSON list, in file order) at the end. A VM that fails fails alone: the
others are still exported and the exit status is 1. Ctrl-C (or SIGTERM) cancels the
running exports between blocks, so nothing is committed half-way; what was committed
before stays.
"""

from __future__ import annotations

import logging
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table
from rich.text import Text

from hypersdk.cli.output import byte_columns, error_fields, human_bytes, print_json, print_table
from hypersdk.engine.export import ExportReport, run_export
from hypersdk.engine.request import ExportHooks, ExportRequest
from hypersdk.errors import (
    ExportCancelled,
    HyperSDKError,
    NotFoundError,
    PasswordError,
    UsageError,
)
from hypersdk.providers.connection import VsphereSettings
from hypersdk.providers.factory import export_key, is_qemu_locator, open_provider
from hypersdk.repository.keys import Password
from hypersdk.repository.repository import Repository
from hypersdk.state.history import History

PROG = "hyperexport"
DEFAULT_CONCURRENCY = 2
MIN_CONCURRENCY = 1
MAX_CONCURRENCY = 32

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManyOptions:
    """``hyperexport --vms``: the VMs in file order, one request for all of them."""

    locators: tuple[str, ...]
    request: ExportRequest
    concurrency: int
    json: bool
    quiet: bool
    vsphere: VsphereSettings | None = None
    password: Password = field(default_factory=Password)


def read_vm_list(source: str) -> tuple[str, ...]:
    """The locators of a ``--vms`` file (``-``: stdin), one a line; blank lines and lines
    starting with ``#`` are skipped. A file that names no VM, a locator that is not one,
    or one VM twice (in any spelling) is a UsageError naming the line: two exports of one
    VM cannot run at once (the repository's per-VM lock would refuse one of them)."""
    where = "stdin" if source == "-" else source
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8") as f:
                text = f.read()
    except OSError as err:
        raise UsageError(f"--vms {where}: cannot read it: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--vms {where}: not UTF-8 text") from None
    locators: list[str] = []
    seen: dict[str, tuple[int, str]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = export_key(line)
        except UsageError as err:
            raise UsageError(f"--vms {where} line {number}: {err}") from None
        if key in seen:
            first, spelling = seen[key]
            raise UsageError(
                f"--vms {where} line {number}: {line} is the same VM as line {first} "
                f"({spelling}); list each VM once"
            )
        seen[key] = (number, line)
        locators.append(line)
    if not locators:
        raise UsageError(f"--vms {where}: names no VM (one locator a line, # for comments)")
    return tuple(locators)


def check_platforms(locators: tuple[str, ...], vsphere: VsphereSettings | None) -> None:
    """A vSphere path without a vSphere server is a mistake in the command, reported
    before anything runs rather than once per VM."""
    if vsphere is not None:
        return
    for locator in locators:
        if not is_qemu_locator(locator):
            open_provider(locator, None)  # raises the single-VM path's UsageError


@dataclass
class Outcome:
    """What became of one VM of the list."""

    locator: str
    started: datetime
    finished: datetime
    report: ExportReport | None = None
    error: str | None = None
    code: str | None = None  # the error's code, as in the single-VM --json error

    def to_json(self) -> dict[str, Any]:
        times = {
            "locator": self.locator,
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat(),
        }
        if self.report is not None:
            return {**self.report.to_json(), **times}
        return {"vm": self.locator, "error": self.error, "code": self.code, **times}


def _now() -> datetime:
    return datetime.now(UTC)


def _describe(err: BaseException) -> tuple[str, str]:
    """(message, code) of one VM's failure, mapped as the single-VM path maps it. An
    unexpected exception is a bug: its traceback goes to stderr, and the other VMs go on."""
    if isinstance(err, (HyperSDKError, OSError, KeyboardInterrupt)):
        message, _, code = error_fields(err)
        return message, code
    log.error("unexpected error", exc_info=err)
    return f"internal error: {type(err).__name__}: {err}", "internal_error"


class ManyProgress:
    """One rich display on stderr (a terminal only): a row per running export and a
    total row. Rows are added once an export knows its size, from any worker thread
    (rich's Progress takes its own lock)."""

    def __init__(self, count: int, *, enabled: bool) -> None:
        self._count = count
        self._finished = 0
        self._grand = 0  # bytes to read by the exports started so far
        self._lock = threading.Lock()
        self._bar: Progress | None = None
        self._total = TaskID(0)
        if enabled and sys.stderr.isatty():
            self._bar = Progress(*byte_columns(), console=Console(stderr=True))
            self._total = self._bar.add_task(self._total_text(), total=0)
            self._bar.start()

    def _total_text(self) -> str:
        return f"total: {self._finished} of {self._count} VMs done"

    def plan(self, locator: str, mode: str, total: int) -> TaskID | None:
        if self._bar is None:
            return None
        with self._lock:
            row = self._bar.add_task(f"{_short(locator)} ({mode})", total=total)
            self._grand += total
            self._bar.update(self._total, total=self._grand)
        return row

    def advance(self, row: TaskID | None, n: int) -> None:
        if self._bar is not None and row is not None:
            self._bar.advance(row, n)
            self._bar.advance(self._total, n)

    def finish(self, row: TaskID | None) -> None:
        if self._bar is None:
            return
        with self._lock:
            self._finished += 1
            if row is not None:
                self._bar.remove_task(row)
            self._bar.update(self._total, description=self._total_text())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


LABEL_WIDTH = 32


def _short(locator: str) -> str:
    """A row label that fits beside its bar: the end of the locator, which tells VMs
    apart even when all their sockets are called qmp.sock (/run/vm1/qmp.sock, ...)."""
    if len(locator) <= LABEL_WIDTH:
        return locator
    return "…" + locator[-(LABEL_WIDTH - 1) :]


def _password_once(output: str, password: Password) -> Password:
    """Unlock an existing repository once, up front: a missing or wrong password (or a
    broken repository) is one error before anything runs, not one per VM, and several
    exports starting together never each prompt on the terminal."""
    quiet = replace(password, prompt=False)
    try:
        Repository.open(output, password=quiet)
    except NotFoundError:
        return password  # a new repository: encrypted only with a password given
    except PasswordError:
        if password.given() is not None or not password.prompt or not sys.stdin.isatty():
            raise
        value = password.get(f"the repository {output}")
        if value is None:
            raise
        checked = replace(quiet, value=value)
        Repository.open(output, password=checked)  # a wrong one: one error, now
        return checked
    return quiet


def _export_one(
    locator: str, opts: ManyOptions, cancel: threading.Event, display: ManyProgress
) -> Outcome:
    started = _now()
    if cancel.is_set():
        return Outcome(
            locator, started, started, error="cancelled before it started", code="cancelled"
        )
    row: TaskID | None = None

    def on_plan(mode: str, reason: str, total: int) -> None:
        nonlocal row
        row = display.plan(locator, mode, total)

    try:
        provider = open_provider(locator, opts.vsphere)
        try:
            report = run_export(
                provider,
                opts.request,
                History(),
                ExportHooks(
                    on_plan=on_plan, progress=lambda n: display.advance(row, n), cancel=cancel
                ),
                password=opts.password,
            )
        finally:
            provider.close()
    except Exception as err:  # one VM's failure must not stop the others
        message, code = _describe(err)
        return Outcome(locator, started, _now(), error=message, code=code)
    finally:
        display.finish(row)
    return Outcome(locator, started, _now(), report=report)


def run_many(opts: ManyOptions) -> int:
    check_platforms(opts.locators, opts.vsphere)
    opts = replace(opts, password=_password_once(opts.request.output, opts.password))
    cancel = threading.Event()
    display = ManyProgress(len(opts.locators), enabled=not (opts.quiet or opts.json))
    interrupted = False
    pool = ThreadPoolExecutor(max_workers=opts.concurrency, thread_name_prefix="export")
    try:
        futures: list[Future[Outcome]] = [
            pool.submit(_export_one, locator, opts, cancel, display) for locator in opts.locators
        ]
        while True:
            try:
                wait(futures)
                break
            except (KeyboardInterrupt, ExportCancelled):
                # Ctrl-C or SIGTERM: stop every export between two blocks and wait for
                # them, so that none is left half-committed; a second one waits too.
                interrupted = True
                cancel.set()
    except BaseException:
        cancel.set()  # whatever stops this thread stops the exports, cleanly
        raise
    finally:
        pool.shutdown(wait=True)
        display.close()
    outcomes = [f.result() for f in futures]
    _report(opts, outcomes, interrupted)
    if interrupted:
        return 130
    return 1 if any(o.report is None for o in outcomes) else 0


def _report(opts: ManyOptions, outcomes: list[Outcome], interrupted: bool) -> None:
    for o in outcomes:
        audit = o.report.audit if o.report is not None else None
        if audit is not None and (audit.blocks_missed or not (opts.quiet or opts.json)):
            prefix = "warning: " if audit.blocks_missed else ""
            sys.stderr.write(f"{prefix}{o.locator}: {audit.summary()}\n")
    if opts.json:
        print_json([o.to_json() for o in outcomes])
        return
    if not opts.quiet:
        print_table(_table(outcomes))
    failed = [o for o in outcomes if o.report is None]
    for o in failed:
        sys.stderr.write(f"{PROG}: error: {o.locator}: {o.error}\n")
    if interrupted:
        sys.stderr.write(f"{PROG}: interrupted; the exports cancelled committed nothing\n")
    elif failed:
        sys.stderr.write(f"{PROG}: {len(failed)} of {len(outcomes)} VMs failed\n")


def _table(outcomes: list[Outcome]) -> Table:
    table = Table(title="hyperexport --vms")
    for name in ("VM", "mode", "reason", "read", "stored", "time", "result"):
        # A locator or a generation cut short ("qcow2:/vms/we…") would name nothing.
        table.add_column(
            name,
            justify="right" if name in ("read", "stored", "time") else "left",
            overflow="fold",
        )
    for o in outcomes:
        r = o.report
        seconds = f"{(o.finished - o.started).total_seconds():.1f} s"
        # Text, not markup: a path or a message may hold "[".
        if r is None:
            error = Text(f"error: {o.error}", style="red")
            table.add_row(Text(o.locator), "-", "-", "-", "-", seconds, error)
        else:
            table.add_row(
                Text(o.locator),
                r.mode,
                Text(r.reason),
                human_bytes(r.bytes_read),
                human_bytes(r.bytes_stored),
                seconds,
                f"generation {r.generation}",
            )
    return table
