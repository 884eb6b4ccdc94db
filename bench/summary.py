"""The ratios every benchmark measured, gathered into one table at the end of `make bench`.

Each bench calls ``record`` for the numbers it has a target for; when
``HYPERSDK_BENCH_SUMMARY`` names a file (the Makefile sets it), each record is appended
there as one JSON line. ``python bench/summary.py FILE`` prints the table and, with
``--reset``, empties the file first (the Makefile does that before the first bench).
Run alone, a bench prints its own lines as before and records nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ENV = "HYPERSDK_BENCH_SUMMARY"


@dataclass(frozen=True)
class Ratio:
    bench: str  # the script's short name, e.g. "qemu"
    what: str  # what the value measures, with its reference
    value: float
    unit: str  # "x" for a ratio, "s" or "MiB" for a bound
    target: str = ""  # e.g. ">= 0.8x"; empty when there is none
    met: bool | None = None  # None: no target


def record(
    bench: str,
    what: str,
    value: float,
    unit: str = "x",
    *,
    at_least: float | None = None,
    at_most: float | None = None,
) -> Ratio:
    """Note one measured value (and its target, if it has one)."""
    target, met = "", None
    if at_least is not None:
        target, met = f">= {at_least:g}{unit}", value >= at_least
    elif at_most is not None:
        target, met = f"<= {at_most:g}{unit}", value <= at_most
    ratio = Ratio(bench, what, round(value, 3), unit, target, met)
    path = os.environ.get(ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(ratio)) + "\n")
    return ratio


def table(rows: list[Ratio]) -> str:
    out = [f"{'bench':<10} {'what':<62} {'value':>10}  {'target':<10} met"]
    for r in rows:
        value = f"{r.value:.2f}{r.unit}" if r.unit == "x" else f"{r.value:.3g} {r.unit}"
        met = "" if r.met is None else ("yes" if r.met else "NO")
        out.append(f"{r.bench:<10} {r.what:<62} {value:>10}  {r.target:<10} {met}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file", type=Path)
    ap.add_argument("--reset", action="store_true", help="empty the file and print nothing")
    args = ap.parse_args()
    if args.reset:
        args.file.write_text("")
        return
    if not args.file.exists():
        sys.exit(f"error: {args.file} does not exist (run the benches first)")
    rows = [Ratio(**json.loads(line)) for line in args.file.read_text().splitlines() if line]
    print("\nEvery ratio of this `make bench` run (issue 14's targets beside them):")
    print(table(rows))


if __name__ == "__main__":
    main()
