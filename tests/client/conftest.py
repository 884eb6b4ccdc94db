from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.live import Hypervisord
from tests.rigs.qsd import MiB, QemuStorageDaemon

TOKEN = "sdk-test-token-0123456789"


@pytest.fixture
def qsd(tmp_path: Path) -> Iterator[QemuStorageDaemon]:
    with QemuStorageDaemon(tmp_path / "qsd", size=16 * MiB) as daemon:
        yield daemon


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def hvd(tmp_path: Path, repo: Path) -> Iterator[Hypervisord]:
    with Hypervisord(tmp_path / "hvd", output=repo, allow=(tmp_path,), token=TOKEN) as daemon:
        yield daemon
