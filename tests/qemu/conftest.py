from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rigs.qsd import MiB, QemuStorageDaemon


@pytest.fixture
def qsd(tmp_path: Path) -> Iterator[QemuStorageDaemon]:
    with QemuStorageDaemon(tmp_path / "qsd", size=16 * MiB) as daemon:
        yield daemon
