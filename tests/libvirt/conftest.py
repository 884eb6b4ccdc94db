from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.libvirt.rig import Domain, Libvirtd, why_not


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[Libvirtd]:
    reason = why_not()
    if reason:
        pytest.skip(reason)
    daemon = Libvirtd()
    try:
        yield daemon.start()
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def shared_domain(libvirtd: Libvirtd) -> Iterator[Domain]:
    """One domain for the libvirt tests, each starting from no checkpoint: without KVM
    for QEMU's user libvirt 9 probes QEMU again on every define (tens of seconds)."""
    dom = Domain(libvirtd)
    try:
        yield dom
    finally:
        dom.close()
