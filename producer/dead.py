"""The dead-letter list: jobs that used up their deliveries (`svdq dead list | retry`).

A job lands here from the worker (worker/delivery.py) with its spec and every attempt's
reason and worker. It never runs again until a person retries it, which clears its delivery
count and queues it afresh.
"""

from __future__ import annotations

import json
from typing import Any

from svdq.producer.client import Client, JobHandle
from svdq.shared.constants import (
    DEAD_DROPPED_KEY,
    DEAD_LETTER_KEY,
    DEAD_MESSAGES_KEY,
    deliveries_key,
    generations_key,
    lease_key,
)
from svdq.shared.errors import InvalidJobError
from svdq.shared.spec import JobSpec


def dead_jobs(redis: Any) -> list[dict[str, Any]]:
    """Every dead-lettered job's record, oldest first (an unreadable one as a stand-in record
    saying so)."""
    records = [_entry(key, raw) for key, raw in redis.hgetall(DEAD_LETTER_KEY).items()]
    return sorted(records, key=lambda r: (r.get("dead_at") or 0, str(r.get("job_id", ""))))


def _entry(key: Any, raw: Any) -> dict[str, Any]:
    """The entry `raw` under `key`, or, when it is not a JSON object, a stand-in that says so
    (a hand edit or a truncated write must not make `svdq dead list` fail)."""
    name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        record = exc
    if isinstance(record, dict):
        return record
    return {"job_id": name, "reason": f"unreadable dead-letter entry ({record!r:.100})"}


def retry_dead(client: Client, job_id: str) -> JobHandle:
    """Take `job_id` off the dead-letter list and queue it again with a fresh delivery count;
    return its JobHandle. Raises InvalidJobError when the job is not dead-lettered, when its
    entry cannot be read, or when the spec it holds is not that job's (an edited entry must
    not delete another job's result.json and run it again: the retry is queued with force)."""
    redis = client.jobqueue.redis
    raw = redis.hget(DEAD_LETTER_KEY, job_id)
    if raw is None:
        raise InvalidJobError(
            f"job {job_id!r} is not on the dead-letter list; `svdq dead list` shows those that are",
            field="job_id",
        )
    record = _entry(job_id, raw)
    if "spec" not in record:  # a message set aside unread (worker/intake.py): no job to run
        raise InvalidJobError(
            f"{job_id!r} is a message no worker could read, or an unreadable entry, not a job, "
            f"so it cannot be retried ({record.get('reason')}): fix its sender and send the "
            "job again",
            field="job_id",
        )
    spec = JobSpec.from_dict(record["spec"])
    if spec.job_id != job_id:
        raise InvalidJobError(
            f"the dead-letter entry {job_id!r} holds a spec with job_id={spec.job_id!r}: a "
            "retry runs only the job the entry is for; submit that spec yourself if it is "
            "what you mean",
            field="job_id",
        )
    # Forget the old attempts first, so the new delivery is number 1, not number 4.
    redis.delete(deliveries_key(job_id), generations_key(job_id), lease_key(job_id))
    # Off the list before it is queued: a worker refuses a job it finds on the list.
    redis.hdel(DEAD_LETTER_KEY, job_id)
    try:
        return client.submit(spec, force=True)
    except Exception:
        redis.hset(DEAD_LETTER_KEY, job_id, raw)  # not queued: keep it where a person sees it
        raise


def cap_note(redis: Any, cap: int) -> str | None:
    """A line saying the list is at its cap of unreadable messages (SVDQ_DEAD_LETTER_MAX) and
    how many older ones were dropped (worker/deadletter.py); None while below it and none were."""
    held = int(redis.zcard(DEAD_MESSAGES_KEY))
    dropped = int(redis.get(DEAD_DROPPED_KEY) or 0)
    if held < cap and not dropped:
        return None
    return (
        f"the dead-letter list keeps at most {cap:,} unreadable messages "
        f"(SVDQ_DEAD_LETTER_MAX; it holds {held:,}): {dropped:,} older ones were dropped; "
        "dead jobs are never dropped"
    )


def describe(record: dict[str, Any]) -> str:
    """A dead job in a few lines a person can act on."""
    reason = record.get("reason") or "(no reason recorded)"
    lines = [f"{record.get('job_id', '?')}: {reason}"]
    attempts = record.get("attempts")
    for attempt in attempts if isinstance(attempts, list) else []:
        if not isinstance(attempt, dict):
            lines.append(f"  {attempt!r:.100}")
            continue
        lines.append(
            f"  #{attempt.get('n')} {attempt.get('worker')} (pid {attempt.get('pid')}): "
            f"{attempt.get('reason')}"
        )
    return "\n".join(lines)
