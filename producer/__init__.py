"""The svdq producer: the Python API (`Client`) and the `svdq` command. Never imports torch."""

from svdq.producer.client import Client, JobFailedError, JobHandle, WaitTimeoutError

__all__ = ["Client", "JobFailedError", "JobHandle", "WaitTimeoutError"]
