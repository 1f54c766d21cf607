"""Turning what a user names as `image` into an object in the store, checked first."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from svdq.shared.constants import input_key
from svdq.shared.errors import InvalidJobError
from svdq.shared.images import ImageInfo, check_image
from svdq.shared.net import fetch_https
from svdq.shared.settings import Settings
from svdq.shared.storage import ObjectNotFoundError, ObjectStore

_MIME = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}


@dataclass(frozen=True)
class StoredInput:
    """An input image, checked and in the store."""

    uri: str
    sha256: str
    info: ImageInfo
    uploaded: bool


def read_local(path: str, settings: Settings) -> bytes:
    """Read a local image file, refusing oversized files before reading them."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InvalidJobError(f"image={path!r}: no such file", field="image")
    size = p.stat().st_size
    if size > settings.max_input_bytes:
        raise InvalidJobError(
            f"image={path!r} is {size:,} bytes: allowed up to {settings.max_input_bytes:,} "
            "(SVDQ_MAX_INPUT_BYTES)",
            field="image",
        )
    return p.read_bytes()


def store_input(image: str, store: ObjectStore, settings: Settings) -> StoredInput:
    """Check the image and make sure it is in the store under inputs/<sha256>.<ext>."""
    if image.lower().startswith(("https://", "http://")):
        if not settings.allow_urls:
            raise InvalidJobError(
                f"image={image[:80]!r}: URL inputs are not enabled here (SVDQ_ALLOW_URLS=1 turns "
                "https:// on); download the image and submit the file",
                field="image",
            )
        # Fetched here, through every check in shared.net, then stored like a local file:
        # workers only ever read the store, never a user's URL.
        data = fetch_https(image, max_bytes=settings.max_input_bytes, timeout=settings.url_timeout)
    elif image.lower().startswith("s3://"):
        key = store.key_from_uri(image)
        if key is None:
            raise InvalidJobError(
                f"image={image!r} is outside the configured bucket ({_bucket(settings)}); only "
                "objects in SVDQ_S3_BUCKET are accepted",
                field="image",
            )
        try:
            data = store.get_bytes(key)
        except ObjectNotFoundError:
            raise InvalidJobError(f"image={image!r} does not exist", field="image") from None
    else:
        data = read_local(image.removeprefix("file://"), settings)
    info = check_image(
        data,
        max_bytes=settings.max_input_bytes,
        max_pixels=settings.max_input_pixels,
        source=f"image={image!r}",
    )
    sha = hashlib.sha256(data).hexdigest()
    key = input_key(sha, info.ext)
    uploaded = False
    if not store.exists(key):
        store.put_bytes(key, data, _MIME[info.ext])
        uploaded = True
    return StoredInput(store.uri(key), sha, info, uploaded)


def _bucket(settings: Settings) -> str:
    """The one bucket s3:// inputs may come from, for messages."""
    if settings.store != "s3":
        return "none: SVDQ_STORE=local takes local files only"
    return f"s3://{settings.s3_bucket}/"
