"""The svdq producer: the Python API (`Client`) and the `svdq` command. Never imports torch."""

from svdq.producer.client import Client, JobHandle

__all__ = ["Client", "JobHandle"]
