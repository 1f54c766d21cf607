"""Cancelling jobs from any process: a flag in Redis the worker checks before and during a
job, and the state set to cancelled at once for jobs that have not started."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery import Celery
from celery.exceptions import TaskRevokedError

from svdq.producer.jobqueue import JobQueue
from svdq.shared.constants import cancel_key
from svdq.shared.states import JobState

REASON = "cancelled by svdq cancel"


def cancel_jobs(jobqueue: JobQueue, job_ids: list[str]) -> dict[str, str]:
    """Cancel each job; return per job what happened (see Client.cancel)."""
    app, expires = jobqueue.app, jobqueue.settings.result_expires
    out: dict[str, str] = {}
    for start in range(0, len(job_ids), 500):
        ids = job_ids[start : start + 500]
        entries = jobqueue.peek(ids)
        pipe = jobqueue.redis.pipeline(transaction=False)
        revoke_now = []
        for entry in entries:
            job_id, state = entry["job_id"], entry["state"]
            if state.is_final:
                out[job_id] = f"already {state}"
                continue
            if state is JobState.UNKNOWN:
                out[job_id] = "unknown"
                continue
            # The flag outlives the queue: a worker that takes the message later drops it.
            pipe.set(cancel_key(job_id), 1, ex=expires)
            if state is JobState.QUEUED:
                revoke_now.append(job_id)
                out[job_id] = "cancelled"
            else:
                out[job_id] = "cancelling"
        for job_id in revoke_now:
            # Readers see "cancelled" at once, before any worker reaches the message; published
            # on the state's key as Celery's backend publishes every state it stores, so the
            # API's event streams (producer/api/hub.py) end too.
            meta = revoked_meta(app, job_id)
            pipe.set(jobqueue.state_key(job_id), meta, ex=expires)
            pipe.publish(jobqueue.state_key(job_id), meta)
        pipe.execute()
    return out


def revoked_meta(app: Celery, job_id: str) -> Any:
    """The REVOKED state record exactly as Celery's Redis backend writes it (written here in
    the same pipeline instead of one round trip per job through backend.mark_as_revoked)."""
    backend = app.backend
    meta = {
        "status": "REVOKED",
        "result": backend.prepare_exception(TaskRevokedError(REASON)),
        "traceback": None,
        "children": [],
        "date_done": datetime.now(UTC).isoformat(),
        "task_id": job_id,
    }
    return backend.encode(meta)
