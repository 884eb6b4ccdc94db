"""Numeric flags, read and range-checked while the arguments are parsed.

Each factory returns an argparse ``type=`` callable: a value that is not a number, not
finite or out of range becomes argparse's one-line usage error (exit 2), never a
traceback further down (``1E400M`` is infinite as a float; ``nan`` compares false with
every bound, so a plain ``<= 0`` check lets it through).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from fractions import Fraction

from hypersdk.engine.request import size_text
from hypersdk.engine.retention import parse_duration
from hypersdk.errors import UsageError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# Digits with an optional decimal part, then an optional unit: "4096", "64K", "1.5M", "1GiB".
_SIZE = re.compile(r"^\s*(\d{1,20}(?:\.\d{1,9})?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'4096', '64K', '1.5M', '1G' -> bytes; ValueError for anything else (no exponent,
    no sign, no fraction of a byte)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (e.g. 4096, 64K, 1M, 1G)")
    value = Fraction(match.group(1)) * _UNITS[match.group(2).upper()]
    if value.denominator != 1:
        raise ValueError(f"not a whole number of bytes: {text!r}")
    return int(value)


def size_in(lo: int, hi: int) -> Callable[[str], int]:
    def read(text: str) -> int:
        try:
            n = parse_size(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(
                f"{text!r} is out of range: from {size_text(lo)} to {size_text(hi)}"
            )
        return n

    return read


def duration(text: str) -> str:
    """A retention-style duration (``7d``, ``26h``, ``1y6m``), checked and kept as text."""
    try:
        parse_duration(text)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    def read(text: str) -> int:
        try:
            n = int(text.strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: from {lo} to {hi}")
        return n

    return read


def float_in(lo: float, hi: float, *, low_open: bool = False) -> Callable[[str], float]:
    """A finite number in [lo, hi] (or (lo, hi] with ``low_open``)."""

    def read(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        too_low = x <= lo if low_open else x < lo
        if not math.isfinite(x) or too_low or x > hi:
            bound = "more than" if low_open else "from"
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: {bound} {lo:g} to {hi:g}")
        return x

    return read
