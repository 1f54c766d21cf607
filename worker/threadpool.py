"""Celery's threads pool, with Flower's "Terminate" made a cancel (SVDQ_OVERLAP ≥ 2).

The stock threads pool cannot end one task: `terminate_job` is BasePool's, which raises
(celery/concurrency/base.py: `raise NotImplementedError(f'{type(self)} does not implement
kill_job')`), so a revoke with terminate=True would fail in the control command and the job
would run on. A thread cannot be killed; here the revoke is a cancel instead: Celery then
marks the task REVOKED and sends `task_revoked` (celery/worker/request.py, Request.terminate
→ `_announce_revoked`), which worker/tasks.py turns into `svdq cancel`'s flag, and the job
stops at its next denoising step (worker/cancellation.py), before any upload.

    celery -A svdq.worker.tasks worker --pool=svdq.worker.threadpool:TaskPool --concurrency=2

(`--pool` takes a class path: celery/concurrency/__init__.py `get_implementation` →
`symbol_by_name(cls, ALIASES)`.)
"""

from __future__ import annotations

import logging
from typing import Any

from celery.concurrency.thread import TaskPool as ThreadTaskPool

log = logging.getLogger("svdq.worker")


class TaskPool(ThreadTaskPool):
    """Threads pool whose "terminate" leaves the job to its cooperative cancel."""

    def terminate_job(self, pid: Any, signal: Any = None) -> None:
        log.warning(
            "terminate asked (signal %s): a thread cannot be killed; the job is cancelled at "
            "its next denoising step instead",
            signal,
        )
