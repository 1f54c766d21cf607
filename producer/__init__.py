"""The svdq producer: the Python API (`Client`) and the `svdq` command. Never imports torch."""

from producer.client import Client, JobHandle

__all__ = ["Client", "JobHandle"]
