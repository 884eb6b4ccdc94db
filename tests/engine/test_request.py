"""ExportRequest: every field is checked once, when the request is built, and a refusal
names the field (not a CLI flag)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from hypersdk.engine.request import ExportRequest, InvalidField
from hypersdk.errors import UsageError

OUT = "/srv/repo"

# (field, bad value, words the message must hold after "<field> ")
BAD: list[tuple[str, Any, str]] = [
    ("output", "repo", "must be an absolute path"),
    ("output", "", "must be an absolute path"),
    ("output", "/a\x00b", "without NUL"),
    ("output", "/" + "a" * 5000, "at most 4096"),
    ("output", None, "must be an absolute path"),
    ("incremental", "yes", "must be true or false"),
    ("incremental", 1, "must be true or false"),
    ("force_full", None, "must be true or false"),
    ("audit", "yes", "must be true or false"),
    ("compression", "gzip", "must be one of zstd, lz4, none"),
    ("compression", "ZSTD", "must be one of zstd, lz4, none"),
    ("compression_level", 0, "from 1 to 22"),
    ("compression_level", 23, "from 1 to 22"),
    ("compression_level", 3.0, "whole number"),
    ("compression_level", True, "whole number"),
    ("block_size", 3, "power of two from 64K to 16M"),
    ("block_size", 96 * 1024, "power of two from 64K to 16M, not 96K"),
    ("block_size", 32 * 1024, "power of two"),
    ("block_size", 32 << 20, "power of two"),
    ("block_size", 0, "power of two"),
    ("block_size", -65536, "power of two"),
    ("block_size", 65536.0, "power of two"),
    ("block_size", True, "power of two"),
    ("parallel", 0, "from 1 to 64"),
    ("parallel", 65, "from 1 to 64"),
    ("parallel", -1, "from 1 to 64"),
    ("parallel", 4.0, "whole number"),
    ("parallel", False, "whole number"),
    ("parallel", "4", "whole number"),
    ("max_incremental_age_days", 0, "more than 0"),
    ("max_incremental_age_days", -1.0, "more than 0"),
    ("max_incremental_age_days", float("nan"), "finite"),
    ("max_incremental_age_days", float("inf"), "finite"),
    ("max_incremental_age_days", 1e12, "at most 36500"),
    ("max_incremental_age_days", True, "finite number of days"),
    ("max_incremental_age_days", "7", "finite number of days"),
]


@pytest.mark.parametrize(("field", "value", "words"), BAD)
def test_a_bad_field_is_refused_by_its_name(field: str, value: Any, words: str) -> None:
    args: dict[str, Any] = {"output": OUT, field: value}
    with pytest.raises(InvalidField) as caught:
        ExportRequest(**args)
    err = caught.value
    assert isinstance(err, UsageError) and err.exit_code == 2 and err.http_status == 422
    assert err.field == field
    assert str(err).startswith(f"{field} "), str(err)
    assert words in err.detail, err.detail
    assert "--" not in str(err)  # worded by field, never by a CLI flag
    assert "\n" not in str(err)


def test_level_is_zstd_only() -> None:
    with pytest.raises(InvalidField, match=r"^compression_level applies to zstd only, not to lz4"):
        ExportRequest(OUT, compression="lz4", compression_level=3)
    # None: the repository's compression, zstd when new; the level goes with it
    assert ExportRequest(OUT, compression_level=3).compression_level == 3
    assert ExportRequest(OUT, compression="zstd", compression_level=22).compression_level == 22


GOOD: list[dict[str, Any]] = [
    {},
    {"incremental": True, "force_full": True},
    {"compression": "none"},
    {"compression": "lz4"},
    {"compression": "zstd", "compression_level": 1},
    {"block_size": 64 * 1024},
    {"block_size": 16 << 20},
    {"block_size": 1 << 20},
    {"parallel": 1},
    {"parallel": 64},
    {"max_incremental_age_days": 0.5},
    {"max_incremental_age_days": 36500},
    {"max_incremental_age_days": 1},
]


@pytest.mark.parametrize("fields", GOOD)
def test_good_requests_are_kept_as_given(fields: dict[str, Any]) -> None:
    request = ExportRequest(OUT, **fields)
    for name, value in fields.items():
        assert getattr(request, name) == value


def test_defaults_and_max_age() -> None:
    request = ExportRequest(OUT)
    assert (request.incremental, request.force_full) == (False, False)
    assert (request.compression, request.compression_level, request.block_size) == (None,) * 3
    assert request.parallel == 4
    assert request.max_age == timedelta(days=7)


def test_a_request_cannot_be_changed_unchecked() -> None:
    request = ExportRequest(OUT)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.parallel = 0  # type: ignore[misc]
    with pytest.raises(InvalidField, match=r"^parallel "):
        dataclasses.replace(request, parallel=0)  # replace builds anew: checked again


def test_the_table_covers_every_field() -> None:
    fields = {f.name for f in dataclasses.fields(ExportRequest)}
    assert {field for field, _, _ in BAD} == fields
