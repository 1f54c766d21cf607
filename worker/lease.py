"""A per-job lease in Redis: `SET NX` with a TTL, renewed from a thread while the job runs.

Only the holder renews or releases it (compare-and-set in Lua), so a delivery whose lease
expired can never release the lease of the delivery that took over. A lease whose holder is a
dead process on this same host is taken over at once, so a pool child killed mid-job does not
make its redelivery wait a whole TTL.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

from svdq.shared.constants import lease_key

log = logging.getLogger(__name__)

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('expire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
_SWAP = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return false
"""


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def holder_is_dead(raw: bytes | str | None, host: str | None = None) -> bool:
    """Whether a lease value names a process on this host that no longer exists."""
    if raw is None:
        return True
    try:
        holder = json.loads(raw)
    except ValueError:
        return False
    if holder.get("host") != (host or socket.gethostname()):
        return False  # another machine: only its TTL can tell
    pid = holder.get("pid")
    return isinstance(pid, int) and pid != os.getpid() and not pid_alive(pid)


class Lease:
    """The right to run one job now. Use `Lease.acquire`, then `with lease:` to keep it renewed."""

    def __init__(
        self,
        redis: Any,
        job_id: str,
        ttl: int,
        value: str,
        on_renew: Callable[[], None] = lambda: None,
    ) -> None:
        self.redis, self.job_id, self.ttl, self.value = redis, job_id, ttl, value
        self.key = lease_key(job_id)
        self.on_renew = on_renew  # told of every renewal (the worker counts them)
        self.lost = threading.Event()  # a renewal found the lease gone or another's
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def acquire(
        cls,
        redis: Any,
        job_id: str,
        ttl: int,
        worker: str,
        on_renew: Callable[[], None] = lambda: None,
    ) -> Lease | None:
        """Take the job's lease, or return None while another live delivery holds it.
        `on_renew` is called after every renewal."""
        value = json.dumps(
            {
                "token": uuid.uuid4().hex,
                "worker": worker,
                "host": socket.gethostname(),
                "pid": os.getpid(),
            }
        )
        key = lease_key(job_id)
        if redis.set(key, value, nx=True, ex=ttl):
            return cls(redis, job_id, ttl, value, on_renew)
        current = redis.get(key)
        if (
            current is not None
            and holder_is_dead(current)
            and redis.eval(_SWAP, 1, key, current, value, ttl)
        ):
            log.warning("job %s: took over the lease of a dead process: %s", job_id, current)
            return cls(redis, job_id, ttl, value, on_renew)
        return None

    def renew(self) -> bool:
        """Push the expiry out by a TTL; False when the lease is no longer ours."""
        ok = bool(self.redis.eval(_RENEW, 1, self.key, self.value, self.ttl))
        if ok:
            self.on_renew()
        return ok

    def release(self) -> None:
        """Give the lease up, only if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.redis.eval(_RELEASE, 1, self.key, self.value)
        except Exception:  # the TTL frees it anyway; never hide the job's own outcome
            log.warning("job %s: could not release the lease", self.job_id, exc_info=True)

    def _keep(self) -> None:
        # Renew at a third of the TTL: two renewals may fail before the lease lapses.
        while not self._stop.wait(max(0.2, self.ttl / 3)):
            try:
                if self.renew():
                    self.lost.clear()
                elif not self.lost.is_set():
                    # Remembered: the run checks it (worker/delivery.py, Guard) at every step
                    # and before it uploads. Renewals go on: a lapsed lease the run takes
                    # back (nobody else took the job) is kept again.
                    log.error("job %s: lease lost (lapsed or taken by another)", self.job_id)
                    self.lost.set()
            except Exception:
                log.warning("job %s: lease renewal failed; retrying", self.job_id, exc_info=True)

    def __enter__(self) -> Lease:
        self._thread = threading.Thread(target=self._keep, name=f"lease-{self.job_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
