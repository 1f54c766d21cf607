"""`svdq cancel` as the worker sees it: a flag in Redis, looked at before a job starts and at
every denoising step, and the REVOKED state a cancelled job ends in.

The producer sets `cancel_key(job_id)` (producer/cancel.py); Celery's own revoke is never used,
so a cancelled job's message is acknowledged like any other and nothing is redelivered.
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


def record(task: Any, exc: JobCancelledError) -> None:
    """End the running task as REVOKED (svdq reads "cancelled"); the caller then raises
    celery's Ignore so Celery leaves that state alone."""
    task.update_state(state=REVOKED, meta={"exc_type": type(exc).__name__, "exc_message": str(exc)})
    log.info("%s: stopped, nothing uploaded", exc)
