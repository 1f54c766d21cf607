"""Saying what was lost when Redis forgot jobs, and the one command that brings them back.

After a Redis restart without AOF (or a failover that lost the last writes) a batch's record
and its jobs' records are gone, and every job not finished reads `unknown`, like a job never
submitted. The durable truth is elsewhere: the object store (result.json: the job finished;
its input: it was submitted) and the batch journal `svdq bulk` keeps on the machine that ran it
(producer/journal.py). `svdq wait --batch` and `svdq status` use them to tell the two apart.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from svdq.producer.jobqueue import JobQueue
from svdq.producer.journal import (
    find_job,
    journal_age,
    journal_ids,
    journal_meta,
    journal_path,
    resubmit_command,
)
from svdq.shared.constants import RESULT_FILE, batch_key, result_dir
from svdq.shared.states import JobState

CHUNK = 500


def redis_note(redis: Any, age: float | None) -> str:
    """What Redis says about having lost state: when it started (if after the submission,
    it restarted since) and whether it keeps an AOF. Empty when it cannot tell."""
    parts = []
    with contextlib.suppress(Exception):  # INFO/CONFIG may be renamed away on managed Redis
        uptime = float(redis.info("server")["uptime_in_seconds"])
        # Redis counts whole seconds on both ends (now and its start time, each truncated),
        # so the true uptime lies within a second either side of the figure.
        if age is not None and uptime - 1 < age:
            parts.append(f"Redis restarted {uptime:.0f} s ago, after this was submitted")
    with contextlib.suppress(Exception):
        if redis.config_get("appendonly").get("appendonly") == "no":
            parts.append("it keeps no AOF (appendonly=no), so a restart empties it")
    return "; ".join(parts)


@dataclass
class LostBatch:
    """A batch as its journal and the store see it, when Redis has lost track of it."""

    batch_id: str
    journal: str  # its path
    source: str  # what the batch was first submitted from
    record_gone: bool  # Redis has no record of the batch itself
    jobs: int = 0
    states: dict[str, int] = field(default_factory=dict)  # by JobState
    lost: int = 0  # no Redis record and no result.json
    command: str = ""
    note: str = ""

    def event(self) -> dict[str, Any]:
        """The --json form."""
        return {"event": "lost", **self.__dict__}

    def text(self) -> str:
        """What `svdq wait --batch` / `svdq status --batch` print for people."""
        what = (
            "its record is gone from Redis"
            if self.record_gone
            else f"{self.lost:,} of its jobs have no record in Redis and no result.json"
        )
        counts = ", ".join(f"{n:,} {s}" for s, n in sorted(self.states.items()) if n)
        lines = [
            f"batch {self.batch_id}: {what} (Redis lost state?"
            + (f" {self.note}" if self.note else "")
            + ")",
            f"  the journal {self.journal} lists {self.jobs:,} jobs (from {self.source}): "
            f"{counts}; {self.lost:,} lost (no record, no result.json)",
        ]
        if self.lost:
            lines.append(
                "  resubmit exactly the lost ones (jobs done or still queued are not sent "
                f"again):\n  {self.command}"
            )
        return "\n".join(lines)


def lost_batch(jobqueue: JobQueue, batch_id: str) -> LostBatch | None:
    """The batch's lost jobs, from this machine's journal; None when there is no journal, or
    when Redis still holds the batch and all its jobs (nothing was lost)."""
    settings = jobqueue.settings
    path = journal_path(settings, batch_id)
    if not path.exists():
        return None
    out = LostBatch(
        batch_id,
        str(path),
        str(journal_meta(settings, batch_id).get("source", "")),
        not jobqueue.redis.exists(batch_key(batch_id)),
        command=resubmit_command(path, batch_id),
    )
    chunk: list[str] = []
    for job_id in journal_ids(path):
        chunk.append(job_id)
        if len(chunk) >= CHUNK:
            _count(jobqueue, chunk, out)
            chunk = []
    _count(jobqueue, chunk, out)
    if not out.record_gone and not out.lost:
        return None
    out.note = redis_note(jobqueue.redis, journal_age(settings, batch_id))
    return out


def _count(jobqueue: JobQueue, job_ids: list[str], out: LostBatch) -> None:
    if not job_ids:
        return
    for entry in jobqueue.states(job_ids):  # result.json settles what Redis forgot
        out.jobs += 1
        state = str(entry["state"])
        out.states[state] = out.states.get(state, 0) + 1
        if entry["state"] is JobState.UNKNOWN:
            out.lost += 1


def no_journal(jobqueue: JobQueue, batch_id: str) -> str:
    """Why a batch unknown to Redis cannot be explained from this machine."""
    return (
        f"batch {batch_id!r} is unknown here: never submitted to this Redis, expired "
        "(SVDQ_RESULT_EXPIRES), or its record was lost (Redis restarted without AOF?), and "
        f"this machine has no journal of it ({journal_path(jobqueue.settings, batch_id)}). "
        "If it was submitted from another machine, run this there; else run the same "
        f"`svdq bulk SOURCE [flags]` again with --batch-id {batch_id}: jobs already done are "
        "not run again"
    )


def unknown_job(jobqueue: JobQueue, job_id: str) -> str:
    """Everything the store and the journals say about a job Redis has no record of and that
    has no result.json: where its spec is, whether its input and outputs are stored, and the
    command that resubmits it."""
    settings = jobqueue.settings
    found = find_job(settings, job_id)
    prefix = found.spec.get("output_prefix") if found else None
    partial = [
        k.rsplit("/", 1)[-1]
        for k in jobqueue.store.list_prefix(result_dir(job_id, prefix))
        if not k.endswith(RESULT_FILE)
    ]
    if found is None:
        text = (
            "Redis has no record of it and the store no result.json: never submitted to this "
            "Redis, expired (SVDQ_RESULT_EXPIRES), or its record is gone (Redis lost state?"
        )
        note = redis_note(jobqueue.redis, None)
        text += (f" {note})" if note else ")") + "."
        if partial:
            text += f" The store holds outputs of it ({', '.join(partial)}): it was running."
        return text + (
            f" Its spec was kept only in Redis (no bulk journal in {settings.batch_dir} lists "
            "it): resubmit with the command that made it, `svdq submit IMAGE [same flags]` "
            "(the same image and parameters give the same job id)."
        )
    image = str(found.spec.get("image", ""))
    key = jobqueue.store.key_from_uri(image)
    stored = bool(key) and jobqueue.store.exists(str(key))
    text = (
        f"its record is gone: Redis lost state? It is in batch {found.batch_id}, its spec "
        f"line {found.line} of {found.path}; its input {image} is "
        + ("in the store" if stored else "NOT in the store (the resubmit needs it back)")
    )
    note = redis_note(jobqueue.redis, journal_age(settings, found.batch_id))
    if note:
        text += f" ({note})"
    if partial:
        text += f"; the store holds outputs of it ({', '.join(partial)}): it was running"
    command = resubmit_command(found.path, found.batch_id)
    return text + f". Resubmit it, with the batch's other lost jobs: {command}"
