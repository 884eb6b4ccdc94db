from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nbd_servers import Servers


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    s = Servers(tmp_path)
    try:
        yield s
    finally:
        s.stop_all()
