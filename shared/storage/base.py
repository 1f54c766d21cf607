"""The object store interface every backend implements."""

from __future__ import annotations

from typing import Protocol

from svdq.shared.errors import SvdqError


class ObjectNotFoundError(SvdqError):
    """Raised when a key the caller asked for is not in the store."""


class ObjectStore(Protocol):
    """Keys are '/'-separated strings built by shared.constants; values are bytes."""

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """Write `data` under `key`, replacing what was there."""

    def get_bytes(self, key: str) -> bytes:
        """Read `key`; raise ObjectNotFoundError if it is absent."""

    def exists(self, key: str) -> bool:
        """Whether `key` is present."""

    def uri(self, key: str) -> str:
        """A URI naming `key` for people and records (s3://bucket/key, file:///path)."""

    def key_from_uri(self, uri: str) -> str | None:
        """The key `uri` names in this store, or None if it names something elsewhere."""

    def presign(self, key: str, seconds: int) -> str:
        """A URL anyone holding it can fetch `key` with, for `seconds`."""
