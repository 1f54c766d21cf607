"""The batch record in Redis: which jobs a bulk submission made, so `wait`, `status` and
`cancel --batch` work from any process.

Keys (all in shared.constants): batch_key (hash of counts), batch_jobs_key (list of job
ids), batch_sources_key (job id -> source), batch_rejects_key (rows that were not jobs).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from svdq.producer.cancel import cancel_jobs
from svdq.producer.jobqueue import JobQueue
from svdq.shared.constants import (
    batch_jobs_key,
    batch_key,
    batch_rejects_key,
    batch_sources_key,
)
from svdq.shared.errors import InvalidJobError, WaitTimeoutError
from svdq.shared.fields import SAFE_ID
from svdq.shared.poll import poll as poll_until
from svdq.shared.states import JobState

CHUNK = 500
MAX_REJECTS = 1000  # rejected rows a batch keeps the reasons of (the rest are counted)
COUNTERS = (
    "submitted",
    "already_done",
    "already_queued",
    "resubmitted",
    "invalid",
    "skipped",
    "upload_failed",  # the input could not be stored (after the S3 client's retries)
)


def new_batch_id() -> str:
    """A fresh batch id: sortable by time, unique enough to never collide."""
    return time.strftime("b%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)


def check_batch_id(batch_id: str) -> str:
    """The id if it is safe in a Redis key and a file name, else InvalidJobError."""
    if not SAFE_ID.fullmatch(batch_id):
        raise InvalidJobError(
            f"batch_id={batch_id[:140]!r} is not allowed: 1–128 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit",
            field="batch_id",
        )
    return batch_id


class BatchRecord:
    """One batch's keys; writes go through a caller's pipeline so a chunk is one round trip."""

    def __init__(self, redis: Any, batch_id: str, expires: int) -> None:
        self.redis = redis
        self.batch_id = check_batch_id(batch_id)
        self.expires = expires

    def keys(self) -> tuple[str, ...]:
        """Every key this batch owns."""
        b = self.batch_id
        return (batch_key(b), batch_jobs_key(b), batch_sources_key(b), batch_rejects_key(b))

    def start(self, source: str) -> bool:
        """Create (or reopen, on a re-run with the same id) the record; True when reopened."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hsetnx(batch_key(self.batch_id), "created_at", time.time())
        pipe.hset(batch_key(self.batch_id), mapping={"source": source, "complete": 0})
        self._expire(pipe)
        return not pipe.execute()[0]

    def members(self, job_ids: list[str]) -> set[str]:
        """Which of `job_ids` the batch lists already (a re-run into it adds each job once)."""
        if not job_ids:
            return set()
        found = self.redis.hmget(batch_sources_key(self.batch_id), job_ids)
        return {j for j, v in zip(job_ids, found, strict=True) if v is not None}

    def add_jobs(self, pipe: Any, jobs: Iterable[tuple[str, str]]) -> None:
        """Queue (on `pipe`) adding (job_id, source) pairs to the batch."""
        pairs = list(jobs)
        if pairs:
            pipe.rpush(batch_jobs_key(self.batch_id), *(j for j, _ in pairs))
            pipe.hset(batch_sources_key(self.batch_id), mapping=dict(pairs))

    def add_rejects(self, pipe: Any, rows: Iterable[dict[str, Any]]) -> None:
        """Queue (on `pipe`) rows that did not become jobs, kept for reports: the first
        MAX_REJECTS of them, and how many there were in all (`rejected`), so a body of bad
        lines cannot fill Redis (each kept one is a sentence, ~250 bytes, for days)."""
        blobs = [json.dumps(r) for r in rows]
        if blobs:
            pipe.rpush(batch_rejects_key(self.batch_id), *blobs)
            pipe.ltrim(batch_rejects_key(self.batch_id), 0, MAX_REJECTS - 1)
            pipe.hincrby(batch_key(self.batch_id), "rejected", len(blobs))

    def count(self, pipe: Any, counts: dict[str, int]) -> None:
        """Queue (on `pipe`) adding `counts` to the batch's submission counters."""
        for name, n in counts.items():
            if n:
                pipe.hincrby(batch_key(self.batch_id), name, n)
        self._expire(pipe)

    def finish(self) -> None:
        """Mark submission complete (an interrupted bulk leaves it 0)."""
        self.redis.hset(batch_key(self.batch_id), "complete", 1)

    def info(self) -> dict[str, Any]:
        """The record: source, created_at, complete, the counters and the number of jobs."""
        raw = self.redis.hgetall(batch_key(self.batch_id))
        if not raw:
            raise InvalidJobError(
                f"batch {self.batch_id!r} is unknown here: never submitted to this Redis, or "
                "expired (SVDQ_RESULT_EXPIRES)",
                field="batch_id",
            )
        data = {_s(k): _s(v) for k, v in raw.items()}
        out: dict[str, Any] = {"batch_id": self.batch_id, "source": data.get("source", "")}
        out["created_at"] = self._number(data, "created_at", float)
        out["complete"] = data.get("complete") == "1"
        out.update({name: self._number(data, name, int) for name in COUNTERS})
        out["rejected"] = self._number(data, "rejected", int)
        out["jobs"] = int(self.redis.llen(batch_jobs_key(self.batch_id)))
        return out

    def _number(self, data: dict[str, str], name: str, kind: type[int] | type[float]) -> Any:
        """Field `name` of the record as a number; a tampered one is a sentence naming the
        batch, the field and its value, never a ValueError traceback."""
        try:
            return kind(data.get(name, 0))
        except ValueError:
            raise InvalidJobError(
                f"batch {self.batch_id!r}: its record in Redis is damaged: {name}="
                f"{data[name]!r:.60} is not {'a number' if kind is float else 'an integer'} "
                "(svdq writes one); the batch cannot be read",
                field=name,
            ) from None

    def job_chunks(self, size: int = CHUNK) -> Iterator[list[str]]:
        """The batch's job ids, `size` at a time, without loading them all."""
        start = 0
        while True:
            ids = self.redis.lrange(batch_jobs_key(self.batch_id), start, start + size - 1)
            if not ids:
                return
            yield [_s(i) for i in ids]
            start += size

    def sources(self, job_ids: list[str]) -> list[str]:
        """The source each job came from (same order)."""
        if not job_ids:
            return []
        values = self.redis.hmget(batch_sources_key(self.batch_id), job_ids)
        return [_s(v) if v is not None else "" for v in values]

    def rejects(self) -> Iterator[dict[str, Any]]:
        """The rows that did not become jobs, in order."""
        start = 0
        while True:
            blobs = self.redis.lrange(batch_rejects_key(self.batch_id), start, start + CHUNK - 1)
            if not blobs:
                return
            for blob in blobs:
                yield dict(json.loads(blob))
            start += CHUNK

    def _expire(self, pipe: Any) -> None:
        for key in self.keys():
            pipe.expire(key, self.expires)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Batch:
    """A bulk submission seen from any process (Client.batch)."""

    def __init__(self, jobqueue: JobQueue, batch_id: str) -> None:
        self.jobqueue = jobqueue
        self.batch_id = batch_id
        self.record = BatchRecord(jobqueue.redis, batch_id, jobqueue.settings.result_expires)

    def info(self) -> dict[str, Any]:
        """The submission record (source, counters, complete, number of jobs)."""
        return self.record.info()

    def job_ids(self) -> Iterator[str]:
        """Every job id in the batch, in submission order."""
        for chunk in self.record.job_chunks():
            yield from chunk

    def states(self) -> Iterator[dict[str, Any]]:
        """Each job's state (see JobQueue.states: result.json settles UNKNOWN), with `source`."""
        for chunk in self.record.job_chunks():
            for entry, source in zip(
                self.jobqueue.states(chunk), self.record.sources(chunk), strict=True
            ):
                entry["source"] = source
                yield entry

    def counts(self) -> dict[str, int]:
        """How many jobs are in each state now."""
        counts: dict[str, int] = {}
        for entry in self.states():
            counts[entry["state"]] = counts.get(entry["state"], 0) + 1
        return counts

    def cancel(self) -> dict[str, int]:
        """Cancel every job of the batch that has not ended; counts of what happened."""
        out: dict[str, int] = {}
        for chunk in self.record.job_chunks():
            for what in cancel_jobs(self.jobqueue, chunk).values():
                out[what] = out.get(what, 0) + 1
        return out

    def wait(
        self,
        timeout: float | None = None,
        on_update: Callable[[dict[str, int]], None] | None = None,
        poll: float = 1.0,
    ) -> dict[str, int]:
        """Block until every job ends; return the final counts by state.

        `on_update(counts)` is called after each pass. Raises WaitTimeoutError on timeout.
        """
        open_jobs = 0
        for _ in poll_until(poll, timeout):
            counts = self.counts()
            if on_update:
                on_update(counts)
            # UNKNOWN is not open: Redis and the store both forgot it; nothing to wait for.
            open_jobs = sum(n for s, n in counts.items() if JobState(s).is_open)
            if not open_jobs:
                return counts
        raise WaitTimeoutError(
            f"batch {self.batch_id}: {open_jobs} job(s) not finished after {timeout}s; "
            f"follow them with `svdq wait --batch {self.batch_id}`"
        )
