"""`svdq cancel` as the worker sees it: a flag in Redis, looked at before a job starts and at
every denoising step, and the REVOKED state a cancelled job ends in, announced with Celery's
own task-revoked event so Flower and `celery events` see the end `svdq status` shows.

The producer sets `cancel_key(job_id)` (producer/cancel.py); svdq cancel does not use Celery's
revoke, so a cancelled job's message is acknowledged like any other and nothing is
redelivered. A revoke someone sends through Celery (Flower's Revoke or Terminate) is a
person's cancel too: the parent process records it as one (worker/lifecycle.py).
"""

from __future__ import annotations

import logging
from typing import Any

from svdq.shared.constants import cancel_key
from svdq.shared.errors import JobCancelledError

log = logging.getLogger("svdq.worker")

REVOKED = "REVOKED"  # Celery's state name; svdq shows it as "cancelled"


def check(redis: Any, job_id: str | None) -> None:
    """Raise JobCancelledError if `svdq cancel` flagged this job (one EXISTS)."""
    if job_id and redis.exists(cancel_key(job_id)):
        raise JobCancelledError(f"job {job_id} was cancelled")


def announce(task: Any) -> None:
    """Send the task-revoked event Celery sends when it revokes a task itself, with the same
    fields (celery/worker/request.py, Request._announce_revoked):

        self.send_event('task-revoked',
                        terminated=terminated, signum=signum, expired=expired)

    where Request.send_event sends only while the worker sends task events (-E, here
    worker_send_task_events, shared/celery_app.py). Without it the job stays STARTED in
    Flower's state forever: the task raises Ignore, for which Celery sends no event at all
    (celery/app/trace.py: `except Ignore` → handle_ignore, which only logs)."""
    if task.app.conf.worker_send_task_events and task.send_events:
        task.send_event("task-revoked", terminated=False, signum=None, expired=False)


def record(task: Any, exc: JobCancelledError) -> None:
    """End the running task as REVOKED (svdq reads "cancelled"); the caller then raises
    celery's Ignore so Celery leaves that state alone."""
    task.update_state(state=REVOKED, meta={"exc_type": type(exc).__name__, "exc_message": str(exc)})
    log.info("%s: stopped, nothing uploaded", exc)
