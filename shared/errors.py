"""The one error tree. Each class says what the system must do when it is raised."""

from __future__ import annotations


class SvdqError(Exception):
    """Raised for any failure svdq itself recognises; catch this to catch them all."""


class InvalidJobError(SvdqError):
    """Raised when a job can never succeed as given: reject it at once, never retry."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (str(self), self.field))


class ConfigError(SvdqError):
    """Raised at start-up when an SVDQ_* variable or a flag has a value we cannot use."""


class TransientError(SvdqError):
    """Raised for faults that may pass (storage, network): retry with backoff."""


class ResourceError(SvdqError):
    """Raised when the job ran out of memory even on the last memory profile."""


class ModelNotFoundError(ConfigError):
    """Raised when a variant's weights are not on this machine (svdq never downloads them)."""


class EncodeError(SvdqError):
    """Raised when a clip cannot be encoded (ffmpeg failed; its message is included): the job
    fails, not retried, since the same frames would fail the same way."""


class WorkerFatalError(SvdqError):
    """Raised when the process cannot go on (CUDA context broken): exit so it is replaced."""


class DeadLetteredError(SvdqError):
    """Raised when a job used up its deliveries: it waits in the dead-letter list for a person."""


class JobTimeoutError(SvdqError):
    """Raised when a job ran past its time limit: failed with the limit named, not retried."""


class AlreadyFailedError(SvdqError):
    """Raised when a late copy of a job's message arrives after the job failed for good."""


class JobFailedError(SvdqError):
    """Raised when a caller asks for a job's result and the job ended without a clip."""


class WaitTimeoutError(SvdqError):
    """Raised when a wait runs out of time before the jobs end; the jobs go on running."""
