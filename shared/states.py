"""The states a job can be in, as people and scripts read them (`svdq status`, `--json`, the
Python API), and how Celery's own state names map onto them. The one place job states are
defined, like arq's JobStatus and cog's Status.
"""

from __future__ import annotations

from enum import StrEnum

from svdq.shared.constants import STATE_PROGRESS


class Outcome(StrEnum):
    """How one delivery of a job ended, as the finished-jobs stream (FINISHED_STREAM) and the
    `svdq_jobs` metric count it; `svdq stats` and `svdq exporter` read the same words."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # result.json was there already: the job did no work now
    CANCELLED = "cancelled"  # `svdq cancel`, or a Celery revoke (Flower's Terminate)
    RETRIED = "retried"  # sent back to its queue (transient fault, busy lease): not an end


class JobState(StrEnum):
    """Where a job is. A StrEnum: each member is the very string users see."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # Neither Redis nor the store knows the job: never submitted here, or forgotten.
    UNKNOWN = "unknown"

    @property
    def is_final(self) -> bool:
        """The job has ended and will not change again (unless it is submitted again)."""
        return self in _FINAL

    @property
    def is_open(self) -> bool:
        """Something will still happen to the job: a wait for it goes on. UNKNOWN is neither
        final nor open: nothing is coming, so there is nothing to wait for."""
        return self in _OPEN

    @classmethod
    def from_celery(cls, name: str) -> JobState:
        """The state for a Celery state name. Celery stores only those in the table (REJECTED
        and IGNORED are never stored), so anything else is UNKNOWN."""
        return _CELERY.get(name, cls.UNKNOWN)


_FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
_OPEN = frozenset({JobState.QUEUED, JobState.RUNNING, JobState.RETRYING})

# Celery's state names (celery.states, plus svdq's PROGRESS) -> what a person reads.
_CELERY = {
    "PENDING": JobState.QUEUED,
    "RECEIVED": JobState.QUEUED,
    "STARTED": JobState.RUNNING,
    STATE_PROGRESS: JobState.RUNNING,
    "RETRY": JobState.RETRYING,
    "SUCCESS": JobState.SUCCEEDED,
    "FAILURE": JobState.FAILED,
    "REVOKED": JobState.CANCELLED,
}
