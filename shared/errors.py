"""The one error tree: every error svdq raises is a `SvdqError` (`except SvdqError` catches
them all), and each class belongs to a family that says how whoever catches it must react.

Reject, never retry: the request can never succeed as given; change it.
    InvalidJobError      a job's field, image or URL: the producer refuses it, a worker fails it
    CallbackRefused      a callback_url where SVDQ_CALLBACK_NETWORKS forbids: the call is dropped
    ConfigError          an SVDQ_* variable or a flag: the process does not start
    ModelNotFoundError   a variant's weights are not on this machine

Retry later: nothing is wrong with the job; try again after a wait.
    TransientError       storage or network: retried with backoff, on a budget of its own
    RetryLater           this delivery ends now; the job is queued again in `wait` seconds
    LeaseBusy            another live delivery is running the job

Fail for good: a budget ran out, or another try would end the same way. Not retried; a
person may send the job again.
    ResourceError        out of memory on the last memory profile
    JobTimeoutError      past its time limit
    DeadLetteredError    out of deliveries: it waits in the dead-letter list
    EncodeError          the clip could not be encoded (ffmpeg's message included)

Over already: stop, run and upload nothing.
    JobCancelledError    `svdq cancel` flagged the job
    AlreadyFailedError   a late copy of a job that failed for good
    LeaseLost            another delivery has the job (this one was paused past its lease)

Process fatal: the process cannot go on.
    WorkerFatalError     the CUDA context is broken: the worker exits and is replaced

Client side: what a producer's caller gets from a wait.
    JobFailedError       the job ended without a clip (its record says why)
    WaitTimeoutError     the wait ran out; the job goes on

A missing object is `ObjectNotFoundError` (shared/storage/base.py, beside the interface that
raises it): what absence means is the caller's to decide (no result.json: not finished yet).

Celery's own control-flow exceptions (Retry, Reject, Ignore, SoftTimeLimitExceeded) are raised
and caught as Celery's classes and never subclassed here, so nothing of ours sits outside the
tree (tests/unit/test_error_tree.py walks every module to keep it so).
"""

from __future__ import annotations


class SvdqError(Exception):
    """Raised for any failure svdq itself recognises; catch this to catch them all."""


# --- reject, never retry -----------------------------------------------------------------


class InvalidJobError(SvdqError):
    """Raised when a job can never succeed as given: reject it at once, never retry."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (str(self), self.field))


class CallbackRefused(InvalidJobError):
    """Raised when a callback_url resolves where SVDQ_CALLBACK_NETWORKS does not allow: the
    callback is dropped, never retried (the job itself keeps its outcome)."""


class ConfigError(SvdqError):
    """Raised at start-up when an SVDQ_* variable or a flag has a value we cannot use."""


class ModelNotFoundError(ConfigError):
    """Raised when a variant's weights are not on this machine (svdq never downloads them)."""


# --- retry later -------------------------------------------------------------------------


class TransientError(SvdqError):
    """Raised for faults that may pass (storage, network): retry with backoff."""


class RetryLater(SvdqError):
    """Raised when this delivery must end now and the job come back in `wait` seconds (a
    transient fault): queued again, not a failure, no callback."""

    def __init__(self, reason: str, wait: float) -> None:
        super().__init__(reason)
        self.wait = wait

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (str(self), self.wait))


class LeaseBusy(RetryLater):
    """Raised when another live delivery holds the job's lease: queued again after `wait`
    seconds without counting a delivery."""

    def __init__(self, job_id: str, wait: float) -> None:
        super().__init__(f"job {job_id} is running in another delivery; back in {wait:.0f}s", wait)
        self.job_id = job_id

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.job_id, self.wait))


# --- fail for good -----------------------------------------------------------------------


class ResourceError(SvdqError):
    """Raised when the job ran out of memory even on the last memory profile."""


class JobTimeoutError(SvdqError):
    """Raised when a job ran past its time limit: failed with the limit named, not retried."""


class DeadLetteredError(SvdqError):
    """Raised when a job used up its deliveries: it waits in the dead-letter list for a person."""


class EncodeError(SvdqError):
    """Raised when a clip cannot be encoded (ffmpeg failed; its message is included): the job
    fails, not retried, since the same frames would fail the same way."""


# --- over already ------------------------------------------------------------------------


class JobCancelledError(SvdqError):
    """Raised inside a job that `svdq cancel` flagged: stop now, upload nothing, end cancelled."""


class LeaseLost(SvdqError):
    """Raised inside a run whose lease another delivery took (this worker was paused past the
    lease TTL: SIGSTOP, a VM migration, a long GC, and a reaper queued the job again): stop
    now, upload nothing, close nothing, send no callback; the other delivery has the job."""


class AlreadyFailedError(SvdqError):
    """Raised when a late copy of a job's message arrives after the job failed for good."""


# --- process fatal -----------------------------------------------------------------------


class WorkerFatalError(SvdqError):
    """Raised when the process cannot go on (CUDA context broken): exit so it is replaced."""


# --- client side -------------------------------------------------------------------------


class JobFailedError(SvdqError):
    """Raised when a caller asks for a job's result and the job ended without a clip."""


class WaitTimeoutError(SvdqError):
    """Raised when a wait runs out of time before the jobs end; the jobs go on running."""
