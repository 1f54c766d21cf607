"""Object stores behind one interface: S3 (and compatibles) or a local folder."""

from __future__ import annotations

from svdq.shared.settings import Settings
from svdq.shared.storage.base import ObjectNotFoundError, ObjectStore, StorageUnavailable
from svdq.shared.storage.local import LocalStore
from svdq.shared.storage.s3 import S3Store

__all__ = [
    "LocalStore",
    "ObjectNotFoundError",
    "ObjectStore",
    "S3Store",
    "StorageUnavailable",
    "open_store",
]


def open_store(settings: Settings) -> ObjectStore:
    """The store the settings name."""
    if settings.store == "local":
        return LocalStore(settings.local_dir)
    return S3Store(
        settings.s3_bucket, settings.s3_endpoint, settings.s3_region, settings.s3_timeout
    )
