"""At least once in, effects exactly once out: what one delivery of a job does around the run
(steps 3 and 4 of the job's lifecycle, worker/lifecycle.py, which hands in the run).

Order, for every delivery Celery hands us:
1. dead-lettered already → refuse, never run (`svdq dead retry` brings it back);
2. take the job's lease (`SET NX` + TTL, renewed from a thread) → another live delivery holds
   it: come back later without counting a delivery;
3. result.json exists → return the recorded result, no GPU touched (the commit marker); the
   store failing to answer (an error, every S3 try timed out, or the soft time limit reached
   while waiting on it: `on_the_store`) is a transient fault of this delivery (step 5's rule),
   not an end;
4. count the delivery in Redis (Celery's retry count never sees a killed process); an attempt
   left open by an earlier delivery was lost with its process and gets that reason; past
   `SVDQ_MAX_DELIVERIES` the job goes to the dead-letter list with every attempt;
5. run; close the attempt with its outcome. Transient faults retry with exponential backoff and
   jitter on a time budget of their own, not counted as deliveries (shared/retry.py has every
   fault's policy); bad input and time-outs fail at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from celery.exceptions import Reject, SoftTimeLimitExceeded
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from svdq.shared.constants import (
    DEAD_LETTER_KEY,
    REQUEUED_FIELD,
    deliveries_key,
    generations_key,
    job_key,
)
from svdq.shared.errors import (
    AlreadyFailedError,
    DeadLetteredError,
    InvalidJobError,
    JobTimeoutError,
    LeaseBusy,
    LeaseLost,
    RetryLater,
    SvdqError,
    TransientError,
)
from svdq.shared.retry import NEXT_TRY_AT, WAITING, transient_wait
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.shared.storage import StorageUnavailable
from svdq.worker import sharing
from svdq.worker.identity import process_id
from svdq.worker.lease import Lease
from svdq.worker.sharing import LOST_PREFIX

log = logging.getLogger(__name__)

TRANSIENT = "transient: "  # how the reason of an attempt ended by a transient fault starts
SUCCEEDED = "succeeded"  # the reason of an attempt that ended with the job done
LOST = "worker lost during this attempt (process killed or crashed)"
# Errors that mean the broker/backend connection dropped, not that the job is bad.
BROKER_LOST = (RedisConnectionError, RedisTimeoutError, OperationalError)


class Counts(Protocol):
    """What a delivery reports as it goes (worker.metrics.WorkerMetrics is one)."""

    def lease_renewed(self) -> None: ...

    def dead_lettered(self, kind: str) -> None: ...


@contextlib.contextmanager
def on_the_store(what: str) -> Iterator[None]:
    """Around a wait on the store: the job's soft time limit reached in it is the store's
    fault (it did not answer in time), not the job's, so it is StorageUnavailable: retried on
    the transient budget ("waiting: storage unavailable"), not failed as a time-out.

    Celery raises SoftTimeLimitExceeded in the pool child's main thread, wherever it is
    (billiard's soft timeout handler), so a wait in boto or on the upload threads ends here."""
    try:
        yield
    except SoftTimeLimitExceeded:
        raise StorageUnavailable(
            f"{what}: the store had not answered when the job reached its soft time limit"
        ) from None


def _now() -> float:
    return round(time.time(), 3)


def _ended(attempt: dict[str, Any]) -> bool:
    """Whether an attempt ended its run: failed for good, or succeeded."""
    return bool(attempt.get("final")) or attempt.get("reason") == SUCCEEDED


def _transient_end(attempt: dict[str, Any]) -> bool:
    """Whether an attempt ended with a transient fault (not counted as a delivery)."""
    return str(attempt.get("reason") or "").startswith(TRANSIENT)


def attempts(redis: Any, job_id: str) -> list[dict[str, Any]]:
    """Every delivery attempt of a job so far, oldest first."""
    return [json.loads(raw) for raw in redis.lrange(deliveries_key(job_id), 0, -1)]


def dead_record(redis: Any, job_id: str) -> dict[str, Any] | None:
    """The job's dead-letter entry, if it is dead-lettered."""
    raw = redis.hget(DEAD_LETTER_KEY, job_id)
    return dict(json.loads(raw)) if raw else None


def dead_letter(redis: Any, spec: JobSpec, reason: str, expires: int) -> dict[str, Any]:
    """Put the job on the dead-letter list with its spec and every attempt's reason."""
    assert spec.job_id
    record = {
        "job_id": spec.job_id,
        "spec": spec.to_dict(),
        "reason": reason,
        "attempts": attempts(redis, spec.job_id),
        "dead_at": _now(),
    }
    redis.hset(DEAD_LETTER_KEY, spec.job_id, json.dumps(record))
    log.error("job %s dead-lettered: %s", spec.job_id, reason)
    return record


# KEYS: deliveries. ARGV: index, the attempt as this delivery stored it, the closed attempt.
_CLOSE = """
if redis.call('lindex', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('lset', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"""
# KEYS: lease, deliveries. ARGV: lease value, attempt index, attempt as stored, lease TTL.
# 1: the lease is this delivery's; 2: it had lapsed, nobody took the job since (this attempt
# is still open, as stored), taken back; 0: another delivery has the job.
_STILL_OURS = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then
  return 1
end
if holder then
  return 0
end
if redis.call('lindex', KEYS[2], ARGV[2]) ~= ARGV[3] then
  return 0
end
redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[4])
return 2
"""


class Attempt:
    """One delivery's record in the job's attempt list."""

    def __init__(self, redis: Any, job_id: str, expires: int, worker: str) -> None:
        self.redis, self.job_id, self.expires = redis, job_id, expires
        key = deliveries_key(job_id)
        # Attempts still open were cut short with their process: say so before counting.
        # With overlap on, a lost process may have held another job: whether the loss is
        # charged to this one is decided once, from its process's record (worker/sharing.py).
        for index, raw in enumerate(redis.lrange(key, 0, -1)):
            entry = json.loads(raw)
            if entry.get("reason") is None:
                entry.update(reason=LOST, ended_at=None)
            elif "charged" in entry or not str(entry["reason"]).startswith(LOST_PREFIX):
                continue  # classified already, or not a loss
            entry.update(sharing.classify(redis, job_id, entry))
            redis.lset(key, index, json.dumps(entry))
        self.started_at = _now()
        self.entry = {
            "worker": worker,
            "pid": os.getpid(),
            "proc": process_id(),  # the process, by a name no restart reuses (a pid can be)
            "started_at": self.started_at,
            "reason": None,
        }
        self.number = int(redis.rpush(key, json.dumps(self.entry)))
        self.entry["n"] = self.number
        self.stored = json.dumps(self.entry)  # as it is in Redis while open
        redis.lset(key, self.number - 1, self.stored)
        redis.expire(key, expires)

    def close(self, reason: str, final: bool = False) -> bool:
        """Record how this attempt ended; `final` means the job must never run again. Only
        while it is still open as this delivery stored it (compare-and-set): a reaper that
        closed it ("worker lost (host gone)") keeps its story. False when it was not."""
        entry = {**self.entry, "reason": reason, "ended_at": _now(), "final": final}
        key = deliveries_key(self.job_id)
        closed = bool(
            self.redis.eval(_CLOSE, 1, key, self.number - 1, self.stored, json.dumps(entry))
        )
        if not closed:
            log.warning(
                "job %s: attempt %d was closed by another: %s", self.job_id, self.number, reason
            )
        return closed


class Guard:
    """`guard()` raises LeaseLost once another delivery has the job: called by the run at
    every denoising step and right before it uploads and writes result.json. A process paused
    past the lease TTL (SIGSTOP, a VM migration) wakes up to find its job requeued by a reaper
    (which closed this attempt) or taken by another delivery: it must not finish it too."""

    def __init__(self, redis: Any, lease: Lease, attempt: Attempt) -> None:
        self.redis, self.lease, self.attempt = redis, lease, attempt

    def __call__(self) -> None:
        attempt, lease = self.attempt, self.lease
        keys = [lease.key, deliveries_key(attempt.job_id)]
        args = [lease.value, attempt.number - 1, attempt.stored, lease.ttl]
        held = self.redis.eval(_STILL_OURS, 2, *keys, *args)
        if not held:
            raise LeaseLost(f"lease lost: another delivery has job {attempt.job_id}")
        if int(held) == 2:
            log.warning(
                "job %s: its lease had lapsed; nobody took the job: taken back", attempt.job_id
            )


def deliver(
    redis: Any,
    spec: JobSpec,
    settings: Settings,
    worker: str,
    done: Callable[[], dict[str, Any] | None],
    run: Callable[[], dict[str, Any]],
    soft_limit: float | None = None,
    *,
    counts: Counts,
    on_guard: Callable[[Guard], None] = lambda guard: None,
    shared: sharing.Sharing | None = None,
) -> dict[str, Any]:
    """Run one delivery of `spec` under the rules above; return the result record.

    `done()` is the commit-marker check (the recorded result or None), `run()` the work;
    `counts` hears of lease renewals and dead-letters; `on_guard` is handed the run's Guard
    before `run` starts (the run calls it at every step); `shared`, with overlap on, is the
    process's part in poison isolation (worker/sharing.py; None under prefork). Raises
    DeadLetteredError, InvalidJobError, JobTimeoutError (final), LeaseBusy or RetryLater (the
    caller schedules the job again), or whatever else `run` raised (final).
    """
    job_id = spec.job_id
    assert job_id
    dead = dead_record(redis, job_id)
    if dead is not None:
        raise DeadLetteredError(f"job {job_id} is dead-lettered: {dead['reason']}")
    lease = Lease.acquire(redis, job_id, settings.lease_ttl, worker, counts.lease_renewed)
    if lease is None:
        raise LeaseBusy(job_id, settings.lease_ttl)
    with lease:
        # This delivery is the job's run now: a reaper's "requeued" note is history.
        redis.hdel(job_key(job_id), REQUEUED_FIELD)
        # Looked for under the lease, so no other delivery can be writing it right now. One
        # look, not two: each costs a round trip to the store on every job.
        marker_fault: TransientError | None = None
        try:
            recorded = done()
        except TransientError as exc:
            # The store could not say whether the job is done: not the job's fault, and not an
            # answer either. Recorded as a delivery and retried like any transient fault.
            marker_fault, recorded = exc, None
        if recorded is not None:
            log.info("job %s already done: returning the recorded result", job_id)
            return recorded
        window = time.time() - settings.visibility_timeout
        ended = [a for a in attempts(redis, job_id) if a.get("final") and a["ended_at"] > window]
        if ended:
            # A copy of the message outlived a final failure (Redis redelivered it while the
            # first ran): the job failed for good, so this copy reports that and runs nothing.
            # Past the visibility timeout no copy can be in flight: a new submission runs.
            raise AlreadyFailedError(f"job {job_id} already failed: {ended[-1]['reason']}")
        history = attempts(redis, job_id)
        # Deliveries count from the last end, failed for good or succeeded: an earlier
        # submission's attempts do not use up this one's budget (a job run again after an
        # invalid result.json or with --force is a new run, not a redelivery).
        since = max((i + 1 for i, a in enumerate(history) if _ended(a)), default=0)
        attempt = Attempt(redis, job_id, settings.result_expires, worker)
        this_run = attempts(redis, job_id)[since:]
        # Transient faults have a budget of their own (shared/retry.py): they do not count;
        # nor does a loss shared with another job in the process (worker/sharing.py), up to
        # a hard cap of twice the limit in all.
        lost = [a for a in this_run if not _transient_end(a)]
        count = sum(1 for a in lost if a.get("charged", True))
        faults = [a for a in this_run if _transient_end(a)]
        first_fault_at = float(faults[0]["started_at"]) if faults else attempt.started_at
        tries = len(faults) + 1
        if count > settings.max_deliveries or len(lost) > 2 * settings.max_deliveries:
            reason = f"{len(lost) - 1} deliveries, none finished: " + "; ".join(
                f"#{a.get('n')} on {a.get('worker')}: {a.get('reason')}"
                for a in this_run[:-1]
                if not _transient_end(a)
            )
            attempt.close("not run: too many deliveries")
            dead_letter(redis, spec, reason, settings.result_expires)
            counts.dead_lettered("deliveries")
            raise DeadLetteredError(f"job {job_id} dead-lettered after {reason}")
        if marker_fault is not None:
            raise _transient(
                redis, spec, settings, attempt, (tries, first_fault_at), marker_fault, counts
            ) from marker_fault
        on_guard(Guard(redis, lease, attempt))
        alone = contextlib.nullcontext()
        if shared is not None:
            suspect = sharing.suspect(this_run[:-1])
            shared.opened(job_id, attempt, sharing.WAITING if suspect else sharing.RUNNING)
            if suspect:
                log.warning("job %s: its last loss was shared: it runs alone now", job_id)
                alone = shared.alone(job_id)  # type: ignore[assignment]
        try:
            with alone:
                redis.incr(generations_key(job_id))
                redis.expire(generations_key(job_id), settings.result_expires)
                result = run()
        except SoftTimeLimitExceeded:
            reason = (
                f"timed out: ran past its soft time limit of {soft_limit or '?'}s "
                "(SVDQ_TASK_TIME_LIMIT, scaled by variant)"
            )
            attempt.close(reason, final=True)
            raise JobTimeoutError(f"job {job_id} {reason}") from None
        except InvalidJobError as exc:
            attempt.close(f"invalid: {exc}", final=True)
            raise
        except TransientError as exc:
            raise _transient(
                redis, spec, settings, attempt, (tries, first_fault_at), exc, counts
            ) from exc
        except LeaseLost:
            # Another delivery has the job: its attempt is closed already (by the reaper that
            # queued it again, or by the delivery that took over); close nothing, count nothing.
            raise
        except (SystemExit, KeyboardInterrupt):
            # The process is being stopped (terminated by Celery, shut down): not the job's
            # fault. The attempt stays open; the next delivery records it as lost.
            raise
        except BROKER_LOST as exc:
            # Redis went away mid-job: the message is still unacknowledged, so it comes back
            # (visibility timeout). Reject without a FAILURE state. A transient fault, if
            # Redis answers again now to record it so; else the next delivery counts it lost.
            with contextlib.suppress(Exception):
                attempt.close(f"{TRANSIENT}Redis connection lost: {exc}")
            log.warning(
                "job %s: Redis connection lost (%s); the job will be redelivered", job_id, exc
            )
            raise Reject(f"Redis connection lost: {exc}", requeue=False) from exc
        except BaseException as exc:
            attempt.close(f"failed: {type(exc).__name__}: {exc}", final=True)
            raise
        finally:
            if shared is not None:
                with contextlib.suppress(Exception):  # the record expires on its own
                    shared.closed(job_id)
        attempt.close(SUCCEEDED)
        return result


def _transient(
    redis: Any,
    spec: JobSpec,
    settings: Settings,
    attempt: Attempt,
    streak: tuple[int, float],
    exc: TransientError,
    counts: Counts,
) -> SvdqError:
    """Close `attempt` after a transient fault (in the run, or while looking for result.json)
    and say what comes next: RetryLater after a backoff, recorded on the job's record for
    `svdq status`, or DeadLetteredError once SVDQ_TRANSIENT_BUDGET is spent. `streak`: this
    fault's number since the job's last end, and when the first of them began."""
    tries, first_fault_at = streak
    reason = f"{TRANSIENT}{exc}"
    wait = transient_wait(tries, first_fault_at, settings)
    if wait is None:
        attempt.close(reason, final=True)
        spent = f"{time.time() - first_fault_at:.0f}s"
        why = f"transient faults for {spent} (SVDQ_TRANSIENT_BUDGET={settings.transient_budget}s)"
        dead_letter(redis, spec, f"{why}; last: {exc}", settings.result_expires)
        counts.dead_lettered("transient")
        return DeadLetteredError(f"job {spec.job_id} dead-lettered after {why}; last: {exc}")
    attempt.close(reason)
    waiting = "storage unavailable" if isinstance(exc, StorageUnavailable) else "transient fault"
    assert spec.job_id
    pipe = redis.pipeline(transaction=False)
    pipe.hset(job_key(spec.job_id), mapping={WAITING: waiting, NEXT_TRY_AT: time.time() + wait})
    pipe.expire(job_key(spec.job_id), settings.result_expires)
    pipe.execute()
    return RetryLater(reason, wait)
