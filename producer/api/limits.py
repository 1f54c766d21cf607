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
    job_key,
    job_owner_key,
    owner_batches_key,
    owner_open_key,
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

    def quota(self, owner: Owner, adding: int = 1) -> int:
        """Room left for `owner`'s queued jobs; Problem 429 when adding `adding` would pass the
        token's quota. Jobs seen to have ended leave the count here (checked only when full)."""
        cap = owner.quota or self.settings.api_max_queued
        key = owner_open_key(owner.id)
        count = int(self.redis.zcard(key))
        if count + adding > cap:
            ids = [_s(i) for i in self.redis.zrange(key, 0, -1)]
            ended = [e["job_id"] for e in self._peek(ids) if not e["state"].is_open]
            if ended:
                self.redis.zrem(key, *ended)
            count = len(ids) - len(ended)
        if count + adding > cap:
            raise Problem(
                429,
                "quota",
                f"token {owner.name!r} has {count} queued or running jobs: allowed up to {cap} "
                "(svdq token create --quota, SVDQ_API_MAX_QUEUED); wait for some to end",
                headers={"Retry-After": "30"},
            )
        return cap - count

    def _peek(self, ids: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for start in range(0, len(ids), 500):
            out.extend(self.jobqueue.peek(ids[start : start + 500]))
        return out

    def opened(self, owner: Owner, job_ids: list[str]) -> None:
        """Count jobs just queued against the owner's quota."""
        if job_ids:
            now = time.time()
            key = owner_open_key(owner.id)
            pipe = self.redis.pipeline(transaction=False)
            pipe.zadd(key, dict.fromkeys(job_ids, now))
            pipe.expire(key, self.settings.result_expires)
            pipe.execute()

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

    def claim_many(self, owner: Owner, job_ids: list[str]) -> None:
        """Record `owner` on jobs a batch of theirs queued (only where no owner is recorded:
        the ids are this token's derived ones, or chosen ones claimed row by row)."""
        if job_ids:
            pipe = self.redis.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.set(job_owner_key(job_id), owner.id, nx=True)
            pipe.execute()

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
