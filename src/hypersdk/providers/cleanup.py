"""The undo steps of a backup session, as one ordered stack (both providers use it).

A session pushes a named step right after it creates something (a snapshot, a QEMU job,
an NBD export, a client); teardown runs the steps last-in first-out. Every step runs even
when an earlier one fails: one stuck removal must not leave the others behind. Failures
are logged and returned as ``"<step>: <error>"`` lines for the session to report. An
interrupt (Ctrl-C) during a step is noted, the remaining steps still run, and then it is
raised again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from hypersdk.errors import HyperSDKError

log = logging.getLogger(__name__)


class CleanupStack:
    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, step: Callable[[], None]) -> None:
        """Add an undo step named ``what`` (the name is what a failure is reported as)."""
        self._steps.append((what, step))

    def __len__(self) -> int:
        return len(self._steps)

    def run(self) -> list[str]:
        """Run and drop every step, newest first; returns the failures, in that order."""
        errors: list[str] = []
        interrupted: BaseException | None = None
        while self._steps:
            what, step = self._steps.pop()
            try:
                step()
            except (HyperSDKError, OSError) as err:
                log.warning("cleanup: %s failed: %s", what, err)
                errors.append(f"{what}: {err}")
            except Exception as err:  # a bug in a step: keep its trace in the log
                log.warning("cleanup: %s failed: %r", what, err, exc_info=True)
                errors.append(f"{what}: {err!r}")
            except BaseException as err:  # Ctrl-C during cleanup: finish it, then stop
                log.warning("cleanup: %s interrupted: %r", what, err)
                errors.append(f"{what}: interrupted")
                interrupted = interrupted or err
        if interrupted is not None:
            raise interrupted
        return errors
