"""The process's live vSphere sessions: which of our snapshots are in use right now.

A snapshot description says which host and process made it; inside one long-running
process (the daemon) that is not enough to tell a running export from a failed one,
since both carry our own pid. So every session registers the name of each snapshot it
is about to create (with its session id) BEFORE creating it, and unregisters it after
removing it (or after giving up on the removal: what is left then is a leftover of this
process, which a later export may remove). This registry is the package's only
module-level state; it is thread-safe and holds a few strings per running session.

``vm_guard`` serialises, per VM, the short stretch from "look at the VM's snapshots" to
"our snapshot is created", so two sessions of this process cannot both find the VM
without snapshots and then both create one.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class LiveSessions:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: dict[str, str] = {}  # snapshot name -> session id
        self._vm_locks: dict[str, tuple[threading.Lock, int]] = {}  # vm key -> (lock, users)

    def register(self, session_id: str, name: str) -> None:
        with self._lock:
            self._names[name] = session_id

    def unregister(self, name: str) -> None:
        with self._lock:
            self._names.pop(name, None)

    def holds(self, name: str, session_id: str = "") -> bool:
        """True if a session of this process made (or is making) this snapshot."""
        with self._lock:
            return name in self._names or (bool(session_id) and session_id in self._names.values())

    def names(self) -> dict[str, str]:
        with self._lock:
            return dict(self._names)

    @contextlib.contextmanager
    def vm_guard(self, vm_key: str) -> Iterator[None]:
        with self._lock:
            lock, users = self._vm_locks.get(vm_key, (threading.Lock(), 0))
            self._vm_locks[vm_key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._vm_locks[vm_key]
                if users <= 1:
                    del self._vm_locks[vm_key]
                else:
                    self._vm_locks[vm_key] = (lock, users - 1)


LIVE = LiveSessions()
