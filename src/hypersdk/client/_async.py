"""AsyncHyperSDK: the asyncio client (same methods as HyperSDK, as coroutines)."""

from __future__ import annotations

import asyncio
import inspect
from types import TracebackType
from typing import Any, Self

import httpx

from hypersdk.client import _calls as c
from hypersdk.client._calls import ProgressCallback
from hypersdk.client._token import find_token


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


class AsyncHyperSDK:
    """Async client of hypervisord; see HyperSDK.

    async with AsyncHyperSDK("http://localhost:8080") as client:
        job = await client.export_vm("/Datacenter/vm/my-vm", incremental=True)
        job = await client.wait_for_export(job["id"])
    """

    def __init__(
        self,
        base_url: str = c.DEFAULT_BASE_URL,
        token: str | None = None,
        timeout: float = c.DEFAULT_TIMEOUT,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        token = find_token(token, self.base_url)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=c.headers(token), timeout=timeout, transport=transport
        )

    async def _send(self, call: c.Call) -> Any:
        try:
            response = await self._http.send(c.build(self._http, call))
        except httpx.HTTPError as exc:
            raise c.transport_error(call, exc) from exc
        return c.read(call, response)

    # -- CBT (the spec) -----------------------------------------------------------------

    async def enable_cbt(self, vm_path: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._send(c.enable_cbt(vm_path))
        return result

    async def disable_cbt(self, vm_path: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._send(c.disable_cbt(vm_path))
        return result

    async def get_cbt_status(self, vm_path: str, output: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._send(c.cbt_status(vm_path, output))
        return result

    async def analyze_incremental_export(
        self, vm_path: str, output: str | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._send(c.analyze(vm_path, output))
        return result

    # -- export jobs ----------------------------------------------------------------------

    async def export_vm(
        self,
        vm_path: str,
        output: str | None = None,
        incremental: bool = False,
        force_full: bool = False,
        compression: str | None = None,
        parallel: int | None = None,
        *,
        compression_level: int | None = None,
        block_size: int | None = None,
        max_incremental_age_days: float | None = None,
        audit: bool = False,
    ) -> dict[str, Any]:
        """Start an export; returns the job (state ``queued`` or ``running``). ``audit``
        reads every block and reports in the job's result which blocks CBT missed since
        the previous generation."""
        result: dict[str, Any] = await self._send(
            c.export_vm(
                vm_path,
                output=output,
                incremental=incremental,
                force_full=force_full,
                compression=compression,
                parallel=parallel,
                compression_level=compression_level,
                block_size=block_size,
                max_incremental_age_days=max_incremental_age_days,
                audit=audit or None,
            )
        )
        return result

    async def get_export(self, job_id: str) -> dict[str, Any]:
        """Any job by id (exports, restores and verifications share the id space)."""
        result: dict[str, Any] = await self._send(c.get_job(job_id))
        return result

    async def list_exports(
        self,
        state: str | None = None,
        kind: str | None = None,
        vm_path: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._send(
            c.list_jobs(state=state, kind=kind, vm_path=vm_path, limit=limit)
        )
        return result

    async def cancel_export(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._send(c.cancel_job(job_id))
        return result

    async def wait_for_export(
        self,
        job_id: str,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """Poll until the job finishes; returns the final job (check ``state``).
        ``progress`` (a function or a coroutine function) gets the job dict on each
        change. JobTimeoutError after ``timeout``."""
        watch = c.Watch(job_id, timeout, poll_interval, progress)
        while True:
            job = await self.get_export(job_id)
            if watch.changed(job) and watch.progress is not None:
                await _maybe_await(watch.progress(job))
            if watch.finished(job):
                return job
            await asyncio.sleep(watch.pause(job))

    # -- repositories ---------------------------------------------------------------------

    async def list_generations(
        self, output: str | None = None, vm: str | None = None
    ) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._send(c.list_generations(output, vm))
        return result

    async def repository_stats(self, output: str | None = None) -> dict[str, Any]:
        """``GET /repository``: size, chunk count, dedup ratio and last verification."""
        result: dict[str, Any] = await self._send(c.repository_stats(output))
        return result

    async def restore(
        self,
        vm: str,
        to: str,
        generation: str = "latest",
        disk: str | None = None,
        output: str | None = None,
        format: str | None = None,
        force: bool = False,
        since: str | None = None,
        compare: bool = False,
    ) -> dict[str, Any]:
        """Start restoring one disk of a generation to ``to`` (a path on the daemon's host).

        With ``since`` (the generation ``to`` already holds) or ``compare``, ``to`` is an
        existing raw file, block device, qcow2 file or ``qemu:`` locator, and only the
        blocks that differ are written."""
        result: dict[str, Any] = await self._send(
            c.restore(
                vm=vm,
                to=to,
                generation=generation,
                disk=disk,
                output=output,
                format=format,
                force=force,
                since=since,
                compare=compare or None,
            )
        )
        return result

    async def verify(
        self, output: str | None = None, vm: str | None = None, generation: str | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._send(
            c.verify(output=output, vm=vm, generation=generation)
        )
        return result

    async def gc(self, output: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Start a gc job; its ``result`` is ``hyperctl gc --json``'s object."""
        result: dict[str, Any] = await self._send(c.gc(output=output, dry_run=dry_run or None))
        return result

    # -- serve sessions (instant access over NBD) ------------------------------------------

    async def start_serve_session(
        self,
        vm: str,
        generation: str = "latest",
        disk: str | None = None,
        output: str | None = None,
        writable: bool = False,
    ) -> dict[str, Any]:
        """Serve one disk of a generation over NBD on a unix socket of the daemon's host;
        returns the session (``uri``: ``nbd+unix:///?socket=...``). ``writable`` keeps
        writes in an overlay dropped when the session stops."""
        result: dict[str, Any] = await self._send(
            c.start_serve_session(
                vm=vm, generation=generation, disk=disk, output=output, writable=writable
            )
        )
        return result

    async def list_serve_sessions(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._send(c.list_serve_sessions())
        return result

    async def get_serve_session(self, session_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._send(c.get_serve_session(session_id))
        return result

    async def stop_serve_session(self, session_id: str) -> dict[str, Any]:
        """Stop serving: connections are closed, the socket and any overlay removed."""
        result: dict[str, Any] = await self._send(c.stop_serve_session(session_id))
        return result

    # -- backup policies ------------------------------------------------------------------

    async def list_policies(self) -> list[dict[str, Any]]:
        """Every policy, with its ``next_run`` and the ``running`` run's id."""
        result: list[dict[str, Any]] = await self._send(c.list_policies())
        return result

    async def get_policy(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._send(c.get_policy(name))
        return result

    async def put_policy(self, name: str, policy: dict[str, Any]) -> dict[str, Any]:
        """Create or replace a policy (the policy file's fields: ``vms``, ``schedule``,
        ``retention``...); InvalidRequestError names the field that is wrong."""
        result: dict[str, Any] = await self._send(c.put_policy(name, policy))
        return result

    async def delete_policy(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._send(c.delete_policy(name))
        return result

    async def run_policy(self, name: str) -> dict[str, Any]:
        """Run a policy now; returns the run with its first export jobs. ConflictError
        while a run of it is going."""
        result: dict[str, Any] = await self._send(c.run_policy(name))
        return result

    async def policy_history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The policy's runs, newest first (skipped runs too, with their reason)."""
        result: list[dict[str, Any]] = await self._send(c.policy_history(name, limit))
        return result

    # -- service --------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._send(c.health())
        return result

    async def metrics(self) -> str:
        result: str = await self._send(c.metrics())
        return result

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
