"""Cancelling jobs from any process: a flag in Redis the worker checks before and during a
job, and the state set to cancelled at once for jobs that have not started."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from svdq.producer.batch import FINAL, peek
from svdq.shared.constants import cancel_key

REASON = "cancelled by svdq cancel"


def cancel_jobs(client: Any, job_ids: list[str]) -> dict[str, str]:
    """Cancel each job; return per job what happened (see Client.cancel)."""
    app = client.app
    out: dict[str, str] = {}
    for start in range(0, len(job_ids), 500):
        ids = job_ids[start : start + 500]
        entries = peek(app, ids)
        pipe = app.backend.client.pipeline(transaction=False)
        revoke_now = []
        for entry in entries:
            job_id, state = entry["job_id"], entry["state"]
            if state in FINAL:
                out[job_id] = f"already {state}"
                continue
            if state == "unknown":
                out[job_id] = "unknown"
                continue
            # The flag outlives the queue: a worker that takes the message later drops it.
            pipe.set(cancel_key(job_id), 1, ex=client.settings.result_expires)
            if state == "queued":
                revoke_now.append(job_id)
                out[job_id] = "cancelled"
            else:
                out[job_id] = "cancelling"
        for job_id in revoke_now:
            # Readers see "cancelled" at once, before any worker reaches the message.
            pipe.set(
                app.backend.get_key_for_task(job_id),
                revoked_meta(app, job_id),
                ex=client.settings.result_expires,
            )
        pipe.execute()
    return out


def revoked_meta(app: Any, job_id: str) -> Any:
    """The REVOKED state record exactly as Celery's Redis backend writes it (written here in
    the same pipeline instead of one round trip per job through backend.mark_as_revoked)."""
    from celery.exceptions import TaskRevokedError

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
