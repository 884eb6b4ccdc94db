"""The daemon's shared objects, handed to routes as a FastAPI dependency."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fastapi import Request

from hypersdk.daemon.config import DaemonConfig
from hypersdk.daemon.jobs import JobStore
from hypersdk.daemon.paths import AllowedPaths
from hypersdk.daemon.runner import Runner
from hypersdk.errors import UsageError
from hypersdk.providers.base import Provider
from hypersdk.providers.factory import open_provider


@dataclass
class Daemon:
    config: DaemonConfig
    store: JobStore
    runner: Runner
    allowed: AllowedPaths

    def output(self, requested: str | None) -> str:
        """The repository a request names, else the configured default; resolved, and
        ForbiddenPath unless it lies in an allowed folder."""
        out = requested or self.config.output
        if not out:
            raise UsageError("no repository: give 'output' (the daemon has no default)")
        return self.allowed.output(out)

    def check_vm(self, vm_path: str) -> None:
        """ForbiddenPath unless every file a qemu:/qcow2: locator names is allowed."""
        self.allowed.vm_path(vm_path)

    @contextmanager
    def provider(self, vm_path: str) -> Iterator[Provider]:
        self.check_vm(vm_path)
        provider = open_provider(vm_path, self.config.vsphere)
        try:
            yield provider
        finally:
            provider.close()


def daemon(request: Request) -> Daemon:
    d: Daemon = request.app.state.daemon
    return d
