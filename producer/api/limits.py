"""Per-token rules: a request rate, a cap on queued jobs, and who owns which job and batch.

A job submitted through the API records its token's id (job_owner_key), a batch in its record
(OWNER_FIELD); another token asking about it gets 404, as if it did not exist. Ids the API
derives (single jobs and batch rows alike) are prefixed with the token's id, so two tokens
sending the same image never share a job; an id a caller chooses (PUT /v1/jobs/{job_id}, or a
batch row's job_id) that another token holds, that a job queued outside the API holds, or that
already has a result.json in the store, is refused (409).

The owner record has no expiry: a job's outputs stay in the store, readable through the API
(GET /v1/jobs/{id} falls back to result.json once Redis forgets the job), for as long as the
bucket keeps them, so the record of who may read them must last as long (one short string
per job). An expired one would let another token claim the id and read the first one's clip.
"""

from __future__ import annotations

import re
import time
from typing import Any

from svdq.producer.api.problems import Problem
from svdq.producer.api.tokens import Owner
from svdq.producer.jobqueue import JobQueue
from svdq.shared.constants import (
    OWNER_FIELD,
    batch_key,
    job_admit_key,
    job_key,
    job_owner_key,
    owner_batches_key,
    owner_open_key,
    owner_pending_key,
    rate_key,
)
from svdq.shared.errors import InvalidJobError

WINDOW = 60  # seconds of the rate limit's window

# Claim a job for a token (KEYS: its owner key, its record; ARGV: the token id, "1" when the
# id is one the API derived for this token): returns the owner it has afterwards; "" when it
# has a record but no owner (queued by the CLI or Python API). The owner record never expires
# (see the module docstring); PERSIST removes the expiry older versions gave it.
_CLAIM = """
local owner = redis.call('get', KEYS[1])
if owner then
  if owner == ARGV[1] then redis.call('persist', KEYS[1]) end
  return owner
end
if ARGV[2] ~= '1' and redis.call('exists', KEYS[2]) == 1 then return '' end
redis.call('set', KEYS[1], ARGV[1])
return ARGV[1]
"""
# Admit one job (KEYS: the owner's open jobs, its batches' pending slots, the job's owner
# key, its record, its admission marker; ARGV: token id, "1" for a derived id, the quota,
# now, the job id, the marker's seconds, the open set's expiry). {status, jobs counted}:
# taken (another's id, as _CLAIM), busy (another request is queueing it: the marker), full,
# counted (a slot taken) or held (the job already had one). The marker goes when the request
# that set it is done (Limits.release), or after ADMIT_SECONDS if that process died.
_ADMIT = """
local owner = redis.call('get', KEYS[3])
if owner then
  if owner ~= ARGV[1] then return {'taken', 0} end
elseif ARGV[2] ~= '1' and redis.call('exists', KEYS[4]) == 1 then
  return {'taken', 0}
end
if not redis.call('set', KEYS[5], ARGV[1], 'NX', 'EX', tonumber(ARGV[6])) then
  return {'busy', 0}
end
local status = 'held'
if not redis.call('zscore', KEYS[1], ARGV[5]) then
  local used = redis.call('zcard', KEYS[1]) + tonumber(redis.call('get', KEYS[2]) or '0')
  if used >= tonumber(ARGV[3]) then
    redis.call('del', KEYS[5])
    return {'full', used}
  end
  redis.call('zadd', KEYS[1], ARGV[4], ARGV[5])
  redis.call('expire', KEYS[1], tonumber(ARGV[7]))
  status = 'counted'
end
if owner then redis.call('persist', KEYS[3]) else redis.call('set', KEYS[3], ARGV[1]) end
return {status, 0}
"""
# Reserve quota slots for batch rows (KEYS: open jobs, pending slots; ARGV: the quota, how
# many wanted, the pending counter's expiry): how many were granted.
_RESERVE = """
local used = redis.call('zcard', KEYS[1]) + tonumber(redis.call('get', KEYS[2]) or '0')
local got = math.max(0, math.min(tonumber(ARGV[2]), tonumber(ARGV[1]) - used))
if got > 0 then
  redis.call('incrby', KEYS[2], got)
  redis.call('expire', KEYS[2], tonumber(ARGV[3]))
end
return got
"""
ADMIT_SECONDS = 120  # a request that set the marker and died: others wait this long at most
PENDING_SECONDS = 3600  # a batch upload's slots, if its process died holding them
# The form of the ids the API derives: the token's id (16 hex digits), "-", the content id.
_DERIVED = re.compile(r"^[0-9a-f]{16}-")


def id_prefix(owner: Owner) -> str:
    """What goes before every job id the API derives for `owner`."""
    return f"{owner.id}-"


def _taken(job_id: str) -> Problem:
    return Problem(
        409,
        "job-id-taken",
        f"job_id={job_id[:140]!r} is not allowed: it is in use; choose another job_id",
        field="job_id",
    )


class Limits:
    """The rules above, on the producer's Redis."""

    def __init__(self, jobqueue: JobQueue) -> None:
        self.jobqueue = jobqueue
        self.redis = jobqueue.redis
        self.settings = jobqueue.settings
        self._claim = self.redis.register_script(_CLAIM)
        self._admit = self.redis.register_script(_ADMIT)
        self._reserve = self.redis.register_script(_RESERVE)

    def rate(self, owner: Owner, now: float | None = None) -> None:
        """Count one request; Problem 429 with Retry-After past SVDQ_API_RATE_LIMIT a minute."""
        now = time.time() if now is None else now
        window = int(now // WINDOW)
        key = rate_key(f"{owner.id}:{window}")
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, WINDOW * 2)
        count = int(pipe.execute()[0])
        limit = owner.rate or self.settings.api_rate_limit
        if count > limit:
            wait = max(1, int((window + 1) * WINDOW - now) + 1)
            raise Problem(
                429,
                "rate-limit",
                f"token {owner.name!r} made {count} requests this minute: allowed up to "
                f"{limit} a minute (svdq token create --rate, SVDQ_API_RATE_LIMIT); "
                f"try again in {wait}s",
                headers={"Retry-After": str(wait)},
            )

    def cap(self, owner: Owner) -> int:
        """The most queued or running jobs `owner` may have."""
        return owner.quota or self.settings.api_max_queued

    def admit(self, owner: Owner, job_id: str) -> tuple[bool, bool]:
        """Claim `job_id` for `owner` and take a quota slot for it, atomically (one script, so
        parallel requests cannot all see the same free slot, nor all queue the same job):
        (busy, counted). busy: another request is queueing this job now (wait, then look at it
        again); counted: a slot was taken here (give it back with `release` if queueing
        fails). Problem 409 when the id is someone else's (see `claim`), 429 past the quota."""
        derived = "1" if job_id.startswith(id_prefix(owner)) else "0"
        for attempt in (0, 1):
            status, used = self._admit(
                keys=[
                    owner_open_key(owner.id),
                    owner_pending_key(owner.id),
                    job_owner_key(job_id),
                    job_key(job_id),
                    job_admit_key(job_id),
                ],
                args=[
                    owner.id,
                    derived,
                    self.cap(owner),
                    time.time(),
                    job_id,
                    ADMIT_SECONDS,
                    self.settings.result_expires,
                ],
            )
            status = _s(status)
            if status == "full" and attempt == 0 and self._prune(owner):
                continue
            break
        if status == "taken":
            raise _taken(job_id)
        if status == "full":
            raise self._over(owner, int(used))
        return status == "busy", status == "counted"

    def release(self, owner: Owner, job_id: str, counted: bool) -> None:
        """End `admit`'s hold on `job_id`: it is queued (or failed to be: then `counted`
        gives its quota slot back)."""
        pipe = self.redis.pipeline(transaction=False)
        if counted:
            pipe.zrem(owner_open_key(owner.id), job_id)
        pipe.delete(job_admit_key(job_id))
        pipe.execute()

    def reserve(self, owner: Owner, wanted: int) -> int:
        """Hold up to `wanted` quota slots for a batch's rows (their job ids are not known
        until the submitter makes them): how many it got, atomically. `moved` hands them to
        the jobs queued, `unreserve` gives back the rest."""
        if wanted <= 0:
            return 0
        got = 0
        for attempt in (0, 1):
            got = int(
                self._reserve(
                    keys=[owner_open_key(owner.id), owner_pending_key(owner.id)],
                    args=[self.cap(owner), wanted, PENDING_SECONDS],
                )
            )
            if got < wanted and attempt == 0 and self._prune(owner):
                continue
            break
        return got

    def moved(self, owner: Owner, job_ids: list[str], held: int) -> None:
        """`held` reserved slots are over: `job_ids` (the batch's rows just queued) now count
        against the quota as jobs; the owner is recorded on them (claim_many)."""
        pipe = self.redis.pipeline(transaction=False)
        if job_ids:
            for job_id in job_ids:
                pipe.set(job_owner_key(job_id), owner.id, nx=True)
            pipe.zadd(owner_open_key(owner.id), dict.fromkeys(job_ids, time.time()))
            pipe.expire(owner_open_key(owner.id), self.settings.result_expires)
        if held:  # after the zadd: a reader in between counts the jobs twice, never zero times
            pipe.decrby(owner_pending_key(owner.id), held)
        pipe.execute()

    def _prune(self, owner: Owner) -> bool:
        """Forget jobs of the owner's quota seen to have ended; whether any were."""
        key = owner_open_key(owner.id)
        since = {_s(i): t for i, t in self.redis.zrange(key, 0, -1, withscores=True)}
        # A job admitted a moment ago has no record yet (its input is uploading): it has not
        # ended. One with no record for longer than ADMIT_SECONDS never got queued.
        young = time.time() - ADMIT_SECONDS
        ended = [
            e["job_id"]
            for e in self._peek(list(since))
            if not e["state"].is_open and (e["has_record"] or since[e["job_id"]] < young)
        ]
        if ended:
            self.redis.zrem(key, *ended)
        return bool(ended)

    def _over(self, owner: Owner, count: int) -> Problem:
        cap = self.cap(owner)
        return Problem(
            429,
            "quota",
            f"token {owner.name!r} has {count} queued or running jobs: allowed up to {cap} "
            "(svdq token create --quota, SVDQ_API_MAX_QUEUED); wait for some to end",
            headers={"Retry-After": "30"},
        )

    def _peek(self, ids: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for start in range(0, len(ids), 500):
            out.extend(self.jobqueue.peek(ids[start : start + 500]))
        return out

    def claim(self, owner: Owner, job_id: str, output_prefix: str | None = None) -> None:
        """Make `owner` the job's owner, or Problem 409 when it is someone else's, was queued
        outside the API, or has a result in the store and no owner (whoever made that clip,
        it is not this token's to read). `output_prefix`: where the job's result would be."""
        derived = job_id.startswith(id_prefix(owner))
        if not derived:
            self.check_free(owner, job_id, output_prefix)
        held = _s(
            self._claim(
                keys=[job_owner_key(job_id), job_key(job_id)],
                args=[owner.id, "1" if derived else "0"],
            )
        )
        if held != owner.id:
            raise _taken(job_id)

    def check_free(self, owner: Owner, job_id: str, output_prefix: str | None = None) -> None:
        """Problem 409 (or 400 for an id in another token's derived form) now, before any
        upload, when `owner` may not take the chosen id `job_id`."""
        if _DERIVED.match(job_id) and not job_id.startswith(id_prefix(owner)):
            raise InvalidJobError(
                f"job_id={job_id[:140]!r} is not allowed: ids of the form <16 hex digits>-... "
                "are the ones the API derives for each token; choose another job_id",
                field="job_id",
            )
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(job_owner_key(job_id))
        pipe.exists(job_key(job_id))
        held, exists = pipe.execute()
        if held is not None:
            if _s(held) != owner.id:
                raise _taken(job_id)
            return
        if exists or any(
            self.jobqueue.stored_result(job_id, prefix) is not None
            for prefix in dict.fromkeys((output_prefix, None))
        ):
            raise _taken(job_id)

    def owns_job(self, owner: Owner, job_id: str) -> bool:
        """Whether the job's record names `owner` (a job it cannot see is one it cannot touch)."""
        return _s(self.redis.get(job_owner_key(job_id)) or b"") == owner.id

    def owned_jobs(self, owner: Owner, job_ids: list[str]) -> list[str]:
        """Those of `job_ids` that `owner` owns (one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.get(job_owner_key(job_id))
        return [j for j, o in zip(job_ids, pipe.execute(), strict=True) if _s(o or b"") == owner.id]

    def owns_batch(self, owner: Owner, batch_id: str) -> bool:
        """Whether the batch's record names `owner`."""
        return _s(self.redis.hget(batch_key(batch_id), OWNER_FIELD) or b"") == owner.id

    def own_batch(self, owner: Owner, batch_id: str) -> None:
        """Record `owner` on a batch about to be submitted, and the batch in its list."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(batch_key(batch_id), OWNER_FIELD, owner.id)
        pipe.zadd(owner_batches_key(owner.id), {batch_id: time.time()})
        pipe.expire(owner_batches_key(owner.id), self.settings.result_expires)
        pipe.execute()

    def batches(self, owner: Owner, count: int = 50) -> list[str]:
        """The owner's latest `count` batch ids, newest first (those Redis still holds)."""
        key = owner_batches_key(owner.id)
        self.redis.zremrangebyscore(key, 0, time.time() - self.settings.result_expires)
        return [_s(b) for b in self.redis.zrevrange(key, 0, count - 1)]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
