"""One export request: what to export into where and how, checked once when it is built.

The CLI (from its flags), the daemon (from its JSON body, whose defaults are these) and
the benches all build an ``ExportRequest``; nothing below checks its fields again. A bad
field is an ``InvalidField`` worded by the field's name (``block_size must be ...``);
a shell that calls the field something else (``--block-size``) maps the name itself.

The callbacks of a running export (progress, cancel, plan) are not part of the request:
they are ``ExportHooks``, handed to ``run_export`` beside it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from hypersdk.errors import UsageError
from hypersdk.repository.repository import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE
from hypersdk.repository.storage import is_url
from hypersdk.repository.storage.urls import parse_s3_url

COMPRESSIONS = ("zstd", "lz4", "none")
MIN_LEVEL, MAX_LEVEL = 1, 22  # zstd's levels
MIN_PARALLEL, MAX_PARALLEL = 1, 64
DEFAULT_PARALLEL = 4
DEFAULT_MAX_AGE_DAYS = 7.0
MAX_AGE_DAYS = 36500.0  # timedelta refuses more than 999999999 days; a century is plenty
MAX_PATH = 4096


class InvalidField(UsageError):
    """One field of a request is wrong; ``field`` is its name in the request."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field
        self.detail = message  # the message without the field's name


@dataclass(frozen=True)
class ExportRequest:
    output: str  # the repository: an absolute folder path or an s3:// URL
    incremental: bool = False
    force_full: bool = False
    # Read every block and compare with the previous generation and CBT's answer since it
    # (engine/audit.py); implies a full read.
    audit: bool = False
    compression: str | None = None  # None: the repository's own setting (zstd when new)
    compression_level: int | None = None  # zstd only; None: the repository's (1 when new)
    block_size: int | None = None  # for a new repository only; None: 1 MiB
    parallel: int = DEFAULT_PARALLEL
    max_incremental_age_days: float = DEFAULT_MAX_AGE_DAYS

    def __post_init__(self) -> None:
        _check_output(self.output)
        _check_bool("incremental", self.incremental)
        _check_bool("force_full", self.force_full)
        _check_bool("audit", self.audit)
        if self.compression is not None and self.compression not in COMPRESSIONS:
            raise InvalidField(
                "compression", f"must be one of {', '.join(COMPRESSIONS)}, not {self.compression!r}"
            )
        if self.compression_level is not None:
            _check_int("compression_level", self.compression_level, MIN_LEVEL, MAX_LEVEL)
            if self.compression not in (None, "zstd"):
                raise InvalidField(
                    "compression_level", f"applies to zstd only, not to {self.compression}"
                )
        if self.block_size is not None:
            _check_block_size(self.block_size)
        _check_int("parallel", self.parallel, MIN_PARALLEL, MAX_PARALLEL)
        _check_age(self.max_incremental_age_days)

    @property
    def max_age(self) -> timedelta:
        return timedelta(days=self.max_incremental_age_days)


@dataclass(frozen=True)
class ExportHooks:
    """What the caller of a running export watches and controls; never validated data."""

    on_plan: Callable[[str, str, int], None] | None = None  # (mode, reason, bytes to read)
    progress: Callable[[int], None] | None = None  # bytes just processed (any thread)
    cancel: threading.Event | None = None  # checked between blocks


def size_text(n: int) -> str:
    """The shortest exact way to write ``n`` bytes with a unit, as messages show sizes
    (65536 -> '64K'); the CLI's own size messages use it too."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidField(name, f"must be true or false, not {value!r}")


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    # bool is an int in Python; True is not a thread count
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise InvalidField(name, f"must be a whole number from {lo} to {hi}, not {value!r}")


def _check_block_size(value: object) -> None:
    shown: object = value
    if isinstance(value, int) and not isinstance(value, bool):
        if MIN_BLOCK_SIZE <= value <= MAX_BLOCK_SIZE and value & (value - 1) == 0:
            return
        shown = size_text(value)
    raise InvalidField(
        "block_size",
        f"must be a power of two from {size_text(MIN_BLOCK_SIZE)} to "
        f"{size_text(MAX_BLOCK_SIZE)}, not {shown}",
    )


def _check_age(value: object) -> None:
    # nan compares false with every bound: check finiteness first
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 < value <= MAX_AGE_DAYS
    )
    if not ok:
        raise InvalidField(
            "max_incremental_age_days",
            f"must be a finite number of days, more than 0 and at most {MAX_AGE_DAYS:g}, "
            f"not {value!r}",
        )


def _check_output(value: object) -> None:
    """A repository: an absolute folder path or an ``s3://bucket/prefix`` URL."""
    if isinstance(value, str) and is_url(value):
        try:
            parse_s3_url(value)
        except UsageError as exc:
            raise InvalidField("output", str(exc)) from None
        return
    _check_path("output", value)


def _check_path(name: str, value: object) -> None:
    if not isinstance(value, str) or not value.startswith("/"):
        raise InvalidField(name, f"must be an absolute path, not {value!r}")
    if "\x00" in value or len(value) > MAX_PATH:
        raise InvalidField(name, f"must be a path without NUL of at most {MAX_PATH} characters")
