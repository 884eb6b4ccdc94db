"""What each SDK method sends and how it reads the answer, shared by the sync and the
async client: they differ only in how a ``Call`` goes over the wire and how they sleep."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from hypersdk.client._errors import HyperSDKAPIError, JobTimeoutError, NetworkError, error_for

DEFAULT_BASE_URL = "http://localhost:8080"
DEFAULT_TIMEOUT = 30.0
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})

ProgressCallback = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    unwrap: str | None = None  # return this key of the JSON answer
    text: bool = False  # the answer is text, not JSON


def _drop_none(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _job_path(job_id: str) -> str:
    if not job_id:
        raise ValueError("job id is empty")
    return f"/exports/{quote(job_id, safe='')}"


def headers(token: str | None) -> dict[str, str]:
    h = {"Accept": "application/json", "User-Agent": "hypersdk-python"}
    if token:
        h["Authorization"] = f"Bearer {token}"
    return h


# -- the calls -----------------------------------------------------------------------


def enable_cbt(vm_path: str) -> Call:
    return Call("POST", "/cbt/enable", {"vm_path": vm_path})


def disable_cbt(vm_path: str) -> Call:
    return Call("POST", "/cbt/disable", {"vm_path": vm_path})


def cbt_status(vm_path: str, output: str | None) -> Call:
    return Call("POST", "/cbt/status", _drop_none(vm_path=vm_path, output=output))


def analyze(vm_path: str, output: str | None) -> Call:
    return Call("POST", "/incremental/analyze", _drop_none(vm_path=vm_path, output=output))


def export_vm(vm_path: str, **options: Any) -> Call:
    return Call("POST", "/exports", _drop_none(vm_path=vm_path, **options))


def get_job(job_id: str) -> Call:
    return Call("GET", _job_path(job_id))


def list_jobs(**filters: Any) -> Call:
    return Call("GET", "/exports", params=_drop_none(**filters), unwrap="jobs")


def cancel_job(job_id: str) -> Call:
    return Call("DELETE", _job_path(job_id))


def list_generations(output: str | None, vm: str | None) -> Call:
    return Call(
        "GET", "/generations", params=_drop_none(output=output, vm=vm), unwrap="generations"
    )


def repository_stats(output: str | None) -> Call:
    return Call("GET", "/repository", params=_drop_none(output=output))


def restore(**fields: Any) -> Call:
    return Call("POST", "/restores", _drop_none(**fields))


def verify(**fields: Any) -> Call:
    return Call("POST", "/verifications", _drop_none(**fields))


def gc(**fields: Any) -> Call:
    return Call("POST", "/gc", _drop_none(**fields))


def _session_path(session_id: str) -> str:
    if not session_id:
        raise ValueError("session id is empty")
    return f"/serve-sessions/{quote(session_id, safe='')}"


def start_serve_session(**fields: Any) -> Call:
    return Call("POST", "/serve-sessions", _drop_none(**fields))


def list_serve_sessions() -> Call:
    return Call("GET", "/serve-sessions", unwrap="sessions")


def get_serve_session(session_id: str) -> Call:
    return Call("GET", _session_path(session_id))


def stop_serve_session(session_id: str) -> Call:
    return Call("DELETE", _session_path(session_id))


def _policy_path(name: str) -> str:
    if not name:
        raise ValueError("policy name is empty")
    return f"/policies/{quote(name, safe='')}"


def list_policies() -> Call:
    return Call("GET", "/policies", unwrap="policies")


def get_policy(name: str) -> Call:
    return Call("GET", _policy_path(name))


def put_policy(name: str, policy: dict[str, Any]) -> Call:
    return Call("PUT", _policy_path(name), dict(policy))


def delete_policy(name: str) -> Call:
    return Call("DELETE", _policy_path(name))


def run_policy(name: str) -> Call:
    return Call("POST", f"{_policy_path(name)}/run")


def policy_history(name: str, limit: int | None) -> Call:
    return Call(
        "GET", f"{_policy_path(name)}/history", params=_drop_none(limit=limit), unwrap="runs"
    )


def health() -> Call:
    return Call("GET", "/health")


def metrics() -> Call:
    return Call("GET", "/metrics", text=True)


# -- over the wire -------------------------------------------------------------------


def build(client: httpx.Client | httpx.AsyncClient, call: Call) -> httpx.Request:
    return client.build_request(call.method, call.path, json=call.body, params=call.params)


def read(call: Call, response: httpx.Response) -> Any:
    """The result of a call, or the typed exception for an error answer."""
    if response.is_success:
        if call.text:
            return response.text
        try:
            doc = response.json()
        except ValueError as exc:
            raise HyperSDKAPIError(
                f"{call.method} {call.path}: the answer is not JSON",
                status=response.status_code,
                code="invalid_response",
            ) from exc
        return doc[call.unwrap] if call.unwrap is not None else doc
    try:
        body = response.json()
    except ValueError:
        body = None
    raise error_for(response.status_code, body, response.reason_phrase)


def transport_error(call: Call, exc: httpx.HTTPError) -> HyperSDKAPIError:
    # The same codes as the TypeScript SDK: no answer in time, or none at all.
    if isinstance(exc, httpx.TimeoutException):
        return NetworkError(f"{call.method} {call.path} timed out: {exc}", code="timeout")
    return NetworkError(f"{call.method} {call.path} failed: {exc}", code="network_error")


class Watch:
    """The bookkeeping of wait_for_export: deadline, change detection, progress."""

    def __init__(
        self,
        job_id: str,
        timeout: float | None,
        poll_interval: float,
        progress: ProgressCallback | None,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.job_id = job_id
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.poll_interval = poll_interval
        self.progress = progress
        self._last: str | None = None

    def changed(self, job: dict[str, Any]) -> bool:
        """True when the job differs from the last one seen (the progress callback is due)."""
        key = json.dumps(job, sort_keys=True)
        if key == self._last:
            return False
        self._last = key
        return self.progress is not None

    @staticmethod
    def finished(job: dict[str, Any]) -> bool:
        return job.get("state") in TERMINAL_STATES

    def pause(self, job: dict[str, Any]) -> float:
        """Seconds to sleep before the next poll; JobTimeoutError when time is up."""
        if self.deadline is None:
            return self.poll_interval
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise JobTimeoutError(
                f"job {self.job_id} still {job.get('state')} after the timeout", job
            )
        return min(self.poll_interval, left)
