"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture()
def umask_022() -> Iterator[None]:
    """The common default umask, so tests can show modes are set whatever it is."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)
