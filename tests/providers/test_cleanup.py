"""CleanupStack: every undo step runs, newest first, even when some fail; failures are
reported by the step's name; an interrupt waits until every step ran."""

from __future__ import annotations

import logging

import pytest

from hypersdk.errors import ProviderError
from hypersdk.providers.cleanup import CleanupStack


def test_every_step_runs_newest_first_and_failures_are_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []
    stack = CleanupStack()

    def step(name: str, error: BaseException | None = None) -> None:
        def run() -> None:
            ran.append(name)
            if error is not None:
                raise error

        stack.push(name, run)

    step("remove snapshot")
    step("close client", ProviderError("host gone"))
    step("stop server")
    step("drop bitmap", OSError(5, "I/O error"))
    step("cancel job", KeyError("bug"))
    assert len(stack) == 5
    with caplog.at_level(logging.WARNING):
        errors = stack.run()
    assert ran == ["cancel job", "drop bitmap", "stop server", "close client", "remove snapshot"]
    assert errors == [
        "cancel job: KeyError('bug')",
        "drop bitmap: [Errno 5] I/O error",
        "close client: host gone",
    ]
    assert len(stack) == 0 and stack.run() == []  # each step runs once
    logged = [r.getMessage() for r in caplog.records]
    assert any("cleanup: close client failed: host gone" in m for m in logged)


def test_an_interrupt_is_raised_after_every_step_ran() -> None:
    ran: list[str] = []
    stack = CleanupStack()
    stack.push("last", lambda: ran.append("last"))

    def interrupted() -> None:
        ran.append("interrupted")
        raise KeyboardInterrupt

    stack.push("interrupted", interrupted)
    stack.push("first", lambda: ran.append("first"))
    with pytest.raises(KeyboardInterrupt):
        stack.run()
    assert ran == ["first", "interrupted", "last"]
