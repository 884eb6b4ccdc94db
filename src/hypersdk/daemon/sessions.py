"""Serve sessions: a generation's disk served over NBD by the daemon, until stopped.

A session is not a job: it has no end of its own, it lives until ``DELETE`` or the
daemon's shutdown, and it is not kept across restarts (its socket and overlay are
gone with the process). Each session listens on a unix socket inside the daemon's
private state folder (``<state_dir>/serve/<id>.sock``, folder 0700, socket 0600): only
the daemon's user can connect, never the network. The repository is named like
everywhere else (allowed folders, VM names resolved by ``engine.catalog``).
"""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypersdk.access.export import DEFAULT_CACHE_BYTES, RepositoryExport
from hypersdk.access.serving import BackgroundServer, Listen
from hypersdk.engine.catalog import resolve_vm
from hypersdk.errors import ConflictError, NotFoundError
from hypersdk.repository.keys import Password
from hypersdk.repository.repository import Repository
from hypersdk.repository.restore import pick_disk

MAX_SESSIONS = 16
SESSION_CACHE_BYTES = min(DEFAULT_CACHE_BYTES, 64 * 1024 * 1024)


@dataclass
class ServeSession:
    id: str
    output: str
    vm: str
    generation: str
    disk: str
    size: int
    writable: bool
    uri: str
    socket: str
    created: str
    export: RepositoryExport = field(repr=False)
    server: BackgroundServer = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "output": self.output,
            "vm": self.vm,
            "generation": self.generation,
            "disk": self.disk,
            "size": self.size,
            "writable": self.writable,
            "uri": self.uri,
            "socket": self.socket,
            "created": self.created,
            "connections": self.server.active_connections,
            "bytes_read": self.export.bytes_read,
        }

    def stop(self) -> None:
        try:
            self.server.stop()
        finally:
            self.export.close()


class ServeSessions:
    """The daemon's open sessions; every method is thread-safe."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        limit: int = MAX_SESSIONS,
        password: Password | None = None,
    ) -> None:
        self.folder = Path(state_dir) / "serve"
        self.password = password  # the daemon's, for its encrypted repositories
        self.limit = limit
        self._sessions: dict[str, ServeSession | None] = {}  # None: starting
        self._lock = threading.Lock()

    def start(
        self, output: str, vm: str, generation: str, disk: str | None, writable: bool
    ) -> ServeSession:
        """``output`` is resolved and allowed by the caller."""
        repo = Repository.open(output, password=self.password)
        manifest = repo.generation(resolve_vm(repo, vm), generation)
        key = pick_disk(manifest, disk)
        with self._lock:
            if len(self._sessions) >= self.limit:
                raise ConflictError(
                    f"{self.limit} serve sessions are open; stop one (DELETE /serve-sessions/ID)"
                )
            sid = "s-" + secrets.token_hex(6)
            self._sessions[sid] = None  # counted against the limit while it starts
        try:
            self.folder.mkdir(mode=0o700, exist_ok=True)
            os.chmod(self.folder, 0o700)
            sock = str(self.folder / f"{sid}.sock")
            export = RepositoryExport(
                repo, manifest, key, writable=writable, cache_bytes=SESSION_CACHE_BYTES
            )
            try:
                server = BackgroundServer(
                    export, Listen(socket=sock), description=f"{manifest.vm_id} {manifest.id}"
                )
                server.start()
            except BaseException:
                export.close()
                raise
        except BaseException:
            with self._lock:
                del self._sessions[sid]
            raise
        session = ServeSession(
            id=sid,
            output=repo.location,
            vm=manifest.vm_id,
            generation=manifest.id,
            disk=key,
            size=export.size,
            writable=writable,
            uri=server.uri,
            socket=sock,
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            export=export,
            server=server,
        )
        with self._lock:
            self._sessions[sid] = session
        return session

    def get(self, sid: str) -> ServeSession:
        with self._lock:
            session = self._sessions.get(sid)
        if session is None:
            raise NotFoundError(f"no serve session {sid!r}")
        return session

    def list(self) -> list[ServeSession]:
        with self._lock:
            found = [s for s in self._sessions.values() if s is not None]
        return sorted(found, key=lambda s: s.created)

    def stop(self, sid: str) -> ServeSession:
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                raise NotFoundError(f"no serve session {sid!r}")
            del self._sessions[sid]
        session.stop()
        return session

    def close(self) -> None:
        """Stop every session (the daemon is shutting down)."""
        with self._lock:
            found = [s for s in self._sessions.values() if s is not None]
            self._sessions.clear()
        for session in found:
            session.stop()
