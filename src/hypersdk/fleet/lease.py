"""A job's lease and the status its holder writes (protocol: hypersdk.daemon.fleet).

One worker at a time runs a job: the one whose token is in the job's lease key. The lease
expires unless its holder renews it, so a dead worker's job is free again after
``lease_seconds``; a second delivery of a running job (Redis re-delivers a task that
runs longer than its visibility timeout) finds the lease taken and does nothing. Every
status write is made only while the writer still holds the lease (checked in Redis, in
one script), so a worker that lost its job can never overwrite the new holder's status.
"""

from __future__ import annotations

import json
from typing import Any

from hypersdk.daemon.fleet import STATUS_TTL, lease_key, status_key

# KEYS: lease, status. ARGV: token, ttl (s), then field, json value pairs.
_WRITE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
return 1
"""
# KEYS: lease. ARGV: token, ttl (ms).
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    def __init__(self, client: Any, job_id: str, token: str, seconds: float) -> None:
        self.client = client
        self.job_id = job_id
        self.token = token
        self.ms = int(seconds * 1000)
        self._write = client.register_script(_WRITE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def acquire(self) -> bool:
        return bool(self.client.set(lease_key(self.job_id), self.token, nx=True, px=self.ms))

    def renew(self) -> bool:
        """False when the lease expired or another worker holds it now."""
        return bool(self._renew(keys=[lease_key(self.job_id)], args=[self.token, self.ms]))

    def release(self) -> None:
        self._release(keys=[lease_key(self.job_id)], args=[self.token])

    def update(self, job_id: str, **fields: Any) -> bool:
        """Write job fields (a JobSink for JobContext) while holding the lease."""
        args: list[Any] = [self.token, STATUS_TTL]
        for name, value in fields.items():
            args += [name, json.dumps(value)]
        keys = [lease_key(self.job_id), status_key(self.job_id)]
        return bool(self._write(keys=keys, args=args))
