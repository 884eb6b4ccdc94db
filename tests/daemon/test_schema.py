"""schemathesis against the live daemon's /openapi.json: no 500, every response matches
its documented status, content type and schema."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.daemon.live import Hypervisord

TOKEN = "schema-token-0123456789"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hypervisord]:
    # "/" allowed: this test checks shapes, and generated paths should reach the routes
    # (the path rules have their own tests in test_access.py).
    # A default repository: requests without 'output' reach the routes too (an output
    # may also be an s3:// URL, which no generated one is allowed).
    work = tmp_path_factory.mktemp("schema")
    with Hypervisord(work, token=TOKEN, allow=(Path("/"),), output=work / "repo") as daemon:
        yield daemon


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_api_conforms(live: Hypervisord) -> None:
    """Each operation with up to 50 valid and 25 invalid generated requests, driven
    directly with hypothesis (the schemathesis pytest plugin fails on pytest 9)."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    schema = schemathesis.openapi.from_url(f"{live.base_url}/openapi.json", headers=auth)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    for operation, mode in itertools.product(operations, GenerationMode):

        @settings(
            max_examples=50 if mode is GenerationMode.POSITIVE else 25,
            deadline=None,
            database=None,
            derandomize=True,  # the same requests every run: a CI failure reproduces
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: Any) -> None:
            response = case.call_and_validate(
                base_url=live.base_url, headers=auth, timeout=30, checks=CHECKS
            )
            statuses[response.status_code] += 1

        try:
            check()
        except Unsatisfiable:
            # no invalid request exists (no parameters, or a free-form path segment)
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # collect every operation's failure, then report
            failures.append(f"{operation.label} ({mode}): {exc}")
    assert not failures, "\n\n".join(failures)
    print(sorted(statuses.items()))
    assert statuses.total() >= 10 * len(operations)
    assert {200, 202, 404, 422} <= set(statuses)


def test_state_folder_is_private(live: Hypervisord) -> None:
    assert (Path(live.state_dir) / "daemon" / "jobs.db").exists()
