"""The object store interface every backend implements (s3.py, local.py), and what it answers
with. Callers use only this: nothing outside shared/storage reaches for a backend's client,
bucket or folder."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from svdq.shared.errors import SvdqError, TransientError

# User metadata svdq writes beside every object: the sha256 of its bytes, hex.
SHA256_METADATA = "sha256"


class ObjectNotFoundError(SvdqError):
    """Raised when a key the caller asked for is not in the store."""


class StorageUnavailable(TransientError):
    """Raised when the store did not answer, or answered with a fault that may pass (a
    connection refused, a time-out, a 5xx, SlowDown): retried on the transient budget."""


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object without reading it."""

    key: str
    size: int
    # Hex sha256 of the bytes; None for an object svdq did not write (it records one on every
    # write it makes).
    sha256: str | None


class ObjectStore(Protocol):
    """Keys are '/'-separated strings built by shared.constants; values are bytes."""

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """Write `data` under `key`, replacing what was there."""

    def put_if_absent(self, key: str, data: bytes, content_type: str) -> bool:
        """Write `data` under `key` unless something is there; return whether it was there.
        One request where the backend allows (S3: a conditional PUT, If-None-Match: *)."""

    def get_bytes(self, key: str) -> bytes:
        """Read `key`; raise ObjectNotFoundError if it is absent."""

    def exists(self, key: str) -> bool:
        """Whether `key` is present."""

    def head(self, key: str) -> ObjectInfo | None:
        """Size and sha256 of `key` without reading it; None if it is absent."""

    def delete(self, key: str) -> None:
        """Remove `key`; an absent key is no error."""

    def list_prefix(self, prefix: str) -> Iterator[str]:
        """Every key that starts with `prefix`, in key order, fetched as the caller goes."""

    def uri(self, key: str) -> str:
        """A URI naming `key` for people and records (s3://bucket/key, file:///path)."""

    def key_from_uri(self, uri: str) -> str | None:
        """The key `uri` names in this store, or None if it names something elsewhere."""

    def presign(self, key: str, seconds: int) -> str:
        """A URL anyone holding it can fetch `key` with, for `seconds`."""
